//! The JSON body of a GET, for the HTTP tests (panics on any transport or decoding error).

pub async fn get_json<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    url: impl reqwest::IntoUrl,
) -> T {
    http.get(url).send().await.unwrap().json().await.unwrap()
}
