include!("../../tools/link_libtorch.rs");
include!("../../tools/torch_shim.rs");

fn main() {
    link_libtorch();
    // tch only toggles CUDA autocast at its default dtype (fp16); bf16 and CPU autocast
    // need `at::autocast::set_autocast_dtype`, which it does not expose.
    compile_torch_shim("src/autocast.cpp", "cliptune_autocast");
}
