include!("../../tools/link_libtorch.rs");

/// Compiles `src/autocast.cpp`: tch only toggles CUDA autocast at its default dtype (fp16);
/// bf16 and CPU autocast need `at::autocast::set_autocast_dtype`, which it does not expose.
fn build_autocast_shim() {
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB").expect("set by torch-sys");
    let root = std::path::Path::new(&lib)
        .parent()
        .expect("libtorch lib dir has a parent")
        .to_path_buf();
    let include = root.join("include");
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    cc::Build::new()
        .cpp(true)
        .file("src/autocast.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .warnings(false)
        .compile("cliptune_autocast");
    println!("cargo:rerun-if-changed=src/autocast.cpp");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
}

fn main() {
    link_libtorch();
    build_autocast_shim();
}
