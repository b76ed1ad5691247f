"""The computational-cost study: time and peak memory of one training step with each way of
getting curvature (and each optimizer), as a ratio to plain forward+backward of the same model.

Protocol (one process, one configuration at a time):

* Every method gets its own copy of the same initial model and the same mini-batch. The
  reference, "forward+backward", is the model as a user has it: not extended by BackPACK.
* Warm-up: each method runs ``warmup`` steps. A method whose first step raises (e.g. a module
  it does not support) or takes longer than ``max_step_seconds`` is reported as skipped, with
  the reason, and leaves the comparison (in a width sweep also at the larger widths).
* Timing: ``repeats`` rounds; in each round every method runs one step, in an order that
  rotates from round to round, so that slow drifts of the machine (other processes, clocks)
  hit all methods alike. Reported: the median step time and its ratio to the reference's
  median; the spread is the inter-quartile range over the median. The clock is wall time
  (CUDA synchronised before and after each step), or with ``clock="cpu"`` the process's CPU
  time, which a shared machine disturbs less (one CPU thread only: with more, threads that
  spin while waiting would count).
* Memory: after timing, one more step per method with everything the previous step left
  (gradients, curvature fields on the parameters) removed first. Peak = the bytes resident
  before the step (parameters, buffers, the batch, optimizer state) + the largest amount of
  tensor memory allocated beyond that during the step. On CUDA the latter comes from
  ``torch.cuda.max_memory_allocated``; on the CPU from the allocation and free events that
  ``torch.profiler`` (``profile_memory=True``) records for torch's CPU allocator, summed in time
  order. Both count live tensor bytes as torch's allocator hands them out (not the process's
  resident set, which the C allocator's caching blurs).
"""
