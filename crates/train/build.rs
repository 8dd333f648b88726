include!("../../tools/link_libtorch.rs");

/// Compiles `src/fused.cpp` (torch's fused AdamW, which tch does not expose). The autocast
/// shim lives in cliptune-clip, which inference shares.
fn build_fused_shim() {
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB").expect("set by torch-sys");
    let root = std::path::Path::new(&lib)
        .parent()
        .expect("libtorch lib dir has a parent")
        .to_path_buf();
    let include = root.join("include");
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    cc::Build::new()
        .cpp(true)
        .file("src/fused.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .warnings(false)
        .compile("cliptune_fused");
    println!("cargo:rerun-if-changed=src/fused.cpp");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
}

fn main() {
    link_libtorch();
    build_fused_shim();
}
