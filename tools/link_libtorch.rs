// Shared by the build scripts of every crate whose binaries or tests link libtorch
// (included with `include!`). torch-sys only gives its rpath to its own C++ build, so each
// such package adds the libtorch directory as rpath itself; in a CUDA layout it also forces
// `torch_cuda` onto the link line, which `--as-needed` would otherwise drop.
fn link_libtorch() {
    let dep = std::env::var("DEP_TCH_LIBTORCH_LIB")
        .expect("DEP_TCH_LIBTORCH_LIB is set by torch-sys: depend on torch-sys directly");
    let dep = std::path::PathBuf::from(dep);
    // Resolve symlinks (the CUDA layout links into a venv) so that libtorch's own
    // $ORIGIN-relative paths to the nvidia-* libraries work.
    let lib = std::fs::canonicalize(&dep).unwrap_or_else(|_| dep.clone());
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    // Switching between the CPU and CUDA layouts rewrites this file (see setup-libtorch.sh).
    if let Some(root) = dep.parent() {
        println!("cargo:rerun-if-changed={}", root.join("layout").display());
    }
}
