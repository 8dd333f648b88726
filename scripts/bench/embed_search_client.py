"""Search latency client for scripts/bench-embed-search.sh (standard library only).
Sends one warm-up query (the server's first query loads the feature set), then Q text queries
and Q item queries (an item's stored vector as the query: no model work) to POST /search,
one at a time, and prints one JSON line: client wall time and the server's own split
(embed_ms, search_ms) as median / p95 / max, in milliseconds.
Usage: embed_search_client.py URL MODEL DATASET QUERIES K"""
import json
import statistics
import sys
import time
import urllib.request

url, model, dataset, q, k = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])


def post(body):
    req = urllib.request.Request(url + "/search", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=600) as r:
        out = json.load(r)
    return (time.perf_counter() - t) * 1000, out


def stats(xs):
    xs = sorted(xs)
    return {"median": round(statistics.median(xs), 2), "p95": round(xs[int(0.95 * (len(xs) - 1))], 2),
            "max": round(xs[-1], 2)}


base = {"model_id": model, "dataset_id": dataset, "k": k}
first_ms, first = post(dict(base, text="warm up"))
assert len(first["results"]) == k, first
words = ["dog", "cat", "beach", "mountain", "city at night", "red car", "bowl of fruit", "snowy forest"]
text = [post(dict(base, text=f"a photo of a {words[i % len(words)]} number {i}")) for i in range(q)]
items = [post(dict(base, item_id=text[i][1]["results"][0]["item_id"])) for i in range(q)]
print(json.dumps({
    "k": k, "queries": q, "first_query_ms": round(first_ms, 1),
    "text": {"client_ms": stats([t for t, _ in text]), "embed_ms": stats([o["timing"]["embed_ms"] for _, o in text]),
             "search_ms": stats([o["timing"]["search_ms"] for _, o in text])},
    "item": {"client_ms": stats([t for t, _ in items]), "search_ms": stats([o["timing"]["search_ms"] for _, o in items])},
}))
