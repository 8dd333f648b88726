// torch's multi-tensor fused AdamW (`torch.optim.AdamW(fused=True)`), which tch does not
// expose: one kernel per group instead of about ten per parameter, the difference between
// a launch-bound and a compute-bound step on a GPU. Exceptions never cross the C boundary.
#include <ATen/ATen.h>
#include <cstring>
#include <vector>

extern "C" {

// Each array holds `n` tch tensors (`at::Tensor*`). `steps` are f32 scalars on the
// parameters' device, incremented here first (torch.optim does that before the kernel). On failure returns -1 and writes the
// message (truncated, NUL-terminated) into `err`.
int cliptune_fused_adamw(at::Tensor** params, at::Tensor** grads, at::Tensor** exp_avgs,
                         at::Tensor** exp_avg_sqs, at::Tensor** steps, int n, double lr,
                         double beta1, double beta2, double weight_decay, double eps,
                         char* err, int err_len) {
  try {
    std::vector<at::Tensor> p, g, m, v, s;
    for (int i = 0; i < n; i++) {
      p.push_back(*params[i]);
      g.push_back(*grads[i]);
      m.push_back(*exp_avgs[i]);
      v.push_back(*exp_avg_sqs[i]);
      s.push_back(*steps[i]);
    }
    at::_foreach_add_(s, 1);
    at::_fused_adamw_(p, g, m, v, {}, s, lr, beta1, beta2, weight_decay, eps,
                      /*amsgrad=*/false, /*maximize=*/false);
    return 0;
  } catch (const std::exception& e) {
    if (err_len > 0) {
      std::strncpy(err, e.what(), err_len - 1);
      err[err_len - 1] = 0;
    }
    return -1;
  }
}

// Drops the gradients of `n` variables (`zero_grad(set_to_none=True)`, torch's default): the
// next backward then hands its gradient buffer over instead of adding it into a zeroed one,
// which saves a fill and an add over every parameter per step. Returns -1 on failure.
int cliptune_grads_none(at::Tensor** tensors, int n) {
  try {
    for (int i = 0; i < n; i++) tensors[i]->mutable_grad().reset();
    return 0;
  } catch (...) {
    return -1;
  }
}
}
