// The scheduler of the launch emulator (emulator.h): a block's threads are fibers started with
// makecontext/setcontext and switched with _setjmp/_longjmp (no system call per switch), run round-robin
// until each reaches a barrier; barriers are released when every participant has arrived.
#include "emulator.h"

#include <setjmp.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <string>
#include <vector>

namespace xtc_emu {
namespace {

enum class State { Ready, AtBlockBarrier, AtWarpBarrier, Done };

constexpr size_t kStackBytes = 256 * 1024;
constexpr size_t kGuardBytes = 4096;  // a PROT_NONE page below each stack: an overflow faults

struct Fiber {
  ucontext_t start;
  jmp_buf resume_point;
  char* stack = nullptr;
  bool started = false;
  State state = State::Ready;
  unsigned shuffles = 0;
};

struct Emulator {
  std::vector<Fiber> fibers;
  jmp_buf scheduler;
  const std::function<void()>* body = nullptr;
  Fiber* current = nullptr;
  unsigned current_tid = 0;
  uint64_t slots[32][2][32];  // [warp][buffer][lane]
  std::string error;
  std::vector<std::pair<unsigned, unsigned>> launches;  // (grid, block) of every launch since clear()
};

Emulator emu;

void yield_to_scheduler(State state) {
  emu.current->state = state;
  if (_setjmp(emu.current->resume_point) == 0) _longjmp(emu.scheduler, 1);
}

void fiber_main() {
  for (;;) {
    (*emu.body)();
    yield_to_scheduler(State::Done);
  }
}

void ensure_fibers(unsigned n) {
  while (emu.fibers.size() < n) {
    void* mem = mmap(nullptr, kStackBytes + kGuardBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) throw std::bad_alloc();
    mprotect(mem, kGuardBytes, PROT_NONE);
    emu.fibers.emplace_back();
    emu.fibers.back().stack = static_cast<char*>(mem) + kGuardBytes;
  }
}

// Runs fiber t until it reaches a barrier or finishes its thread.
void resume(unsigned t) {
  Fiber& f = emu.fibers[t];
  emu.current = &f;
  emu.current_tid = t;
  threadIdx = uint3{t, 0, 0};
  if (_setjmp(emu.scheduler) != 0) return;
  if (f.started) _longjmp(f.resume_point, 1);
  f.started = true;
  setcontext(&f.start);
}

bool all_in_state(unsigned begin, unsigned end, State s) {
  for (unsigned t = begin; t < end; ++t) {
    if (emu.fibers[t].state != s) return false;
  }
  return true;
}

// Releases the barriers whose participants have all arrived; false when none can be released (a deadlock).
bool release_barriers(unsigned block) {
  bool released = false;
  for (unsigned w = 0; w < block / 32; ++w) {
    if (all_in_state(w * 32, w * 32 + 32, State::AtWarpBarrier)) {
      for (unsigned t = w * 32; t < w * 32 + 32; ++t) emu.fibers[t].state = State::Ready;
      released = true;
    }
  }
  if (!released && all_in_state(0, block, State::AtBlockBarrier)) {
    for (unsigned t = 0; t < block; ++t) emu.fibers[t].state = State::Ready;
    released = true;
  }
  return released;
}

bool run_block(unsigned block) {
  for (unsigned t = 0; t < block; ++t) {
    emu.fibers[t].state = State::Ready;
    emu.fibers[t].shuffles = 0;
  }
  for (;;) {
    for (unsigned t = 0; t < block; ++t) {
      if (emu.fibers[t].state == State::Ready) resume(t);
      if (!emu.error.empty()) return false;
    }
    if (all_in_state(0, block, State::Done)) return true;
    if (!release_barriers(block)) {
      emu.error = "divergent barrier: some threads of the block wait at a barrier the others never reach";
      return false;
    }
  }
}

}  // namespace

void fail(const char* message) {
  emu.error = message;
  _longjmp(emu.scheduler, 1);
}

void set_error(const char* message) { emu.error = message; }

void block_barrier() { yield_to_scheduler(State::AtBlockBarrier); }
void warp_barrier() { yield_to_scheduler(State::AtWarpBarrier); }

uint64_t* warp_slots(unsigned seq) { return emu.slots[emu.current_tid / 32][seq & 1]; }
unsigned& shuffle_count() { return emu.current->shuffles; }

bool run(unsigned grid, unsigned block, const std::function<void()>& body) {
  emu.error.clear();
  emu.launches.emplace_back(grid, block);
  ensure_fibers(block);
  emu.body = &body;
  for (unsigned t = 0; t < block; ++t) {
    Fiber& f = emu.fibers[t];
    getcontext(&f.start);
    f.start.uc_stack.ss_sp = f.stack;
    f.start.uc_stack.ss_size = kStackBytes;
    f.start.uc_link = nullptr;
    makecontext(&f.start, fiber_main, 0);
    f.started = false;
  }
  blockDim = dim3(block, 1, 1);
  gridDim = dim3(grid, 1, 1);
  for (unsigned b = 0; b < grid; ++b) {
    blockIdx = uint3{b, 0, 0};
    if (!run_block(block)) return false;
  }
  return true;
}

}  // namespace xtc_emu

// C interface for the Python side (tests/ops/device_on_host.py).
extern "C" {
const char* xtc_emu_last_error() { return xtc_emu::emu.error.c_str(); }
void xtc_emu_clear_launches() { xtc_emu::emu.launches.clear(); }
int64_t xtc_emu_num_launches() { return static_cast<int64_t>(xtc_emu::emu.launches.size()); }
void xtc_emu_launch(int64_t i, int64_t* grid, int64_t* block) {
  *grid = xtc_emu::emu.launches[static_cast<size_t>(i)].first;
  *block = xtc_emu::emu.launches[static_cast<size_t>(i)].second;
}
}
