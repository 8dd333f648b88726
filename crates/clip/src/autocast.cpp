// Autocast with an explicit dtype, on CPU or CUDA (tch's `autocast` only enables CUDA
// autocast at its default dtype, fp16). Exceptions never cross the C boundary.
#include <ATen/autocast_mode.h>

static at::DeviceType device_of(int device) { return device == 1 ? at::kCUDA : at::kCPU; }

extern "C" {

// device: 0 = CPU, 1 = CUDA; dtype: 0 = float16, 1 = bfloat16.
// Returns the previous enabled state (0/1), or -1 on failure.
int cliptune_autocast_enter(int device, int dtype) {
  try {
    auto dev = device_of(device);
    bool prev = at::autocast::is_autocast_enabled(dev);
    at::autocast::set_autocast_dtype(dev, dtype == 1 ? at::kBFloat16 : at::kHalf);
    at::autocast::set_autocast_enabled(dev, true);
    at::autocast::increment_nesting();
    return prev ? 1 : 0;
  } catch (...) {
    return -1;
  }
}

int cliptune_autocast_exit(int device, int prev) {
  try {
    if (at::autocast::decrement_nesting() == 0) {
      at::autocast::clear_cache();
    }
    at::autocast::set_autocast_enabled(device_of(device), prev == 1);
    return 0;
  } catch (...) {
    return -1;
  }
}
}
