include!("../../tools/link_libtorch.rs");
include!("../../tools/torch_shim.rs");

fn main() {
    link_libtorch();
    // Torch's fused AdamW, which tch does not expose. The autocast shim lives in
    // cliptune-clip, which inference shares.
    compile_torch_shim("src/fused.cpp", "cliptune_fused");
}
