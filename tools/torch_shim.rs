// Shared by the build scripts of the crates that compile a small C++ shim against libtorch
// (included with `include!`, next to link_libtorch.rs): the functions tch does not expose.
/// Compiles `cpp` (relative to the package) into the static library `lib`, against the
/// headers of the libtorch that torch-sys found.
fn compile_torch_shim(cpp: &str, lib: &str) {
    let dep = std::env::var("DEP_TCH_LIBTORCH_LIB").expect("set by torch-sys");
    let root = std::path::Path::new(&dep)
        .parent()
        .expect("libtorch lib dir has a parent")
        .to_path_buf();
    let include = root.join("include");
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    cc::Build::new()
        .cpp(true)
        .file(cpp)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .warnings(false)
        .compile(lib);
    println!("cargo:rerun-if-changed={cpp}");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
}
