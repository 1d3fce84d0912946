// Launch plan of the flat-buffer CUDA kernels (optim_cuda.cu): which elements of each row go
// through 16-byte vector accesses, which through scalar ones, and the grid. A pure function of
// sizes, addresses and two device figures, with no CUDA types, so the CPU build carries it too and
// tests check it without a GPU (dil_fast._C.flat_launch_plan).
//
// A [rows, cols] buffer's row k starts at element k * cols: when cols is not a multiple of the
// vector width, the rows start at different offsets inside a 16-byte vector and a 128-byte cache
// line. Every row is therefore split into a scalar head up to the first line boundary, a body of
// vectors and a scalar tail (less than one vector), so every cols and every row gets the vector
// body, and a warp's 512-byte access covers 4 lines, not 5 (on an H200, Adam over [4, 16,624,131]
// fp32 took 556 us with bodies starting on 16-byte boundaries, 508 us on line boundaries).
#pragma once

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "hd.h"

namespace dil_fast {

constexpr int kFlatThreads = 256;      // threads per block of every flat-buffer kernel
constexpr int kVectorBytes = 16;       // widest access per thread on sm_80..sm_90 (float4, double2)
constexpr int kLineBytes = 128;        // L1/L2 cache line: where a row's vector body starts
// Waves of resident blocks in a large launch: Adam over [4, 16,624,131] fp32 on an H200 took
// 508 us with one wave, 489 us with 4 and 479 us with 16 (879 us before this plan); a few waves
// stagger the blocks' starts (coefficients, first loads) without many blocks per SM.
constexpr int kGridWaves = 4;
constexpr int64_t kMaxFlatRows = 65535;  // rows go to gridDim.y

struct FlatLaunchPlan {
  int64_t rows = 0, cols = 0;
  int vec = 1;            // elements per vector access in the body (16 / element size), 1: all scalar
  int line = 1;           // elements per alignment line of the body's start (a multiple of vec)
  int lead = 0;           // row 0 starts `lead` elements past a line boundary (0 <= lead < line)
  bool side_vec = true;   // the side buffer is read/written in vectors at the body's positions too
  int block = kFlatThreads;
  int64_t grid_x = 0, grid_y = 0;  // grid_y = rows; both 0 when there is nothing to launch
};

// One row's elements: [0, head) scalar, [head, head + body) in vectors of `vec` starting on a line
// boundary, [head + body, cols) scalar; head < line and tail < vec.
struct RowSplit {
  int64_t head = 0, body = 0, tail = 0;
};

DF_HD RowSplit row_split(const FlatLaunchPlan& plan, int64_t k) {
  RowSplit s;
  const int64_t line = plan.line;
  if (line > 1) {
    // only residues modulo line matter, so k * cols is never formed (no overflow for huge buffers)
    const int64_t start = (plan.lead + (k % line) * (plan.cols % line)) % line;
    s.head = (line - start) % line;
    if (s.head > plan.cols) s.head = plan.cols;
  }
  s.body = (plan.cols - s.head) / plan.vec * plan.vec;
  s.tail = plan.cols - s.head - s.body;
  return s;
}

namespace plan_detail {
inline void require(bool ok, const std::string& msg) {
  if (!ok) throw std::invalid_argument("flat launch plan: " + msg);
}
}  // namespace plan_detail

// The vector layout of a launch over `rows` x `cols` elements of `elem_bytes` bytes. `buffers`: the
// addresses of the buffers walked row by row (row k at element k * cols of each); they share a
// vector body only when they start at the same offset inside a 16-byte vector, and its start is
// aligned to the longest line (128, 64, 32 or 16 bytes) on which they all agree. `side`: the address
// of one more buffer whose column i goes with column i of every row (0: none), stacked in
// `side_rows` rows of `cols` (the meta step's sources: rows = 1, side_rows = K) or broadcast
// (SGD's base: side_rows = 1); when its rows do not line up with the body it is read per element.
inline FlatLaunchPlan flat_layout(int64_t rows, int64_t cols, int elem_bytes, const std::vector<uintptr_t>& buffers,
                                  uintptr_t side = 0, int64_t side_rows = 0) {
  using plan_detail::require;
  require(rows >= 0 && cols >= 0, "rows and cols must be non-negative, got " + std::to_string(rows) + " and " +
                                      std::to_string(cols) + ".");
  require(rows <= kMaxFlatRows, "at most " + std::to_string(kMaxFlatRows) + " rows are supported per launch, got " +
                                    std::to_string(rows) + ".");
  require(elem_bytes > 0 && elem_bytes <= kVectorBytes && kVectorBytes % elem_bytes == 0,
          "the element size must divide 16 bytes, got " + std::to_string(elem_bytes) + ".");
  require(!buffers.empty(), "at least one buffer address is needed.");
  require(side_rows >= 0 && (side == 0 || side_rows >= 1), "a side buffer needs at least one row.");
  FlatLaunchPlan p;
  p.rows = rows;
  p.cols = cols;
  auto agree_on = [&](uintptr_t bytes) {
    bool same = buffers[0] % elem_bytes == 0;
    for (uintptr_t b : buffers) same = same && b % bytes == buffers[0] % bytes;
    return same;
  };
  if (agree_on(kVectorBytes)) {
    uintptr_t line = kLineBytes;
    while (!agree_on(line)) line /= 2;
    p.vec = kVectorBytes / elem_bytes;
    p.line = static_cast<int>(line / elem_bytes);
    p.lead = static_cast<int>(buffers[0] % line / elem_bytes);
  }
  // the side buffer's column i lines up with every row's column i only if its start has the same
  // offset in a vector and the rows (its own or the main buffers') all start at row 0's offset
  const bool rows_line_up = cols % p.vec == 0 || (rows <= 1 && side_rows <= 1);
  p.side_vec = p.vec == 1 || side == 0 || (side % kVectorBytes == buffers[0] % kVectorBytes && rows_line_up);
  return p;
}

// The grid of a layout: rows in y; in x, enough blocks for the widest row's vectors but, for large
// buffers, no more than kGridWaves waves of resident blocks over the whole device (`sm_count` SMs
// of `blocks_per_sm` resident blocks of the kernel), each block striding over its row: equal work
// per block, whole waves, and per-block set-up paid a few times per SM instead of once per 256
// elements. More rows than that get one block each.
inline FlatLaunchPlan with_grid(FlatLaunchPlan p, int sm_count, int blocks_per_sm) {
  using plan_detail::require;
  require(sm_count >= 1 && blocks_per_sm >= 1, "the SM count and resident blocks per SM must be positive, got " +
                                                   std::to_string(sm_count) + " and " +
                                                   std::to_string(blocks_per_sm) + ".");
  if (p.rows == 0 || p.cols == 0) {
    p.grid_x = p.grid_y = 0;
    return p;
  }
  const int64_t units = std::max<int64_t>(1, p.cols / p.vec);  // vector accesses of a row (at most)
  const int64_t needed = (units + p.block - 1) / p.block;
  const int64_t most = kGridWaves * int64_t(sm_count) * blocks_per_sm;
  p.grid_y = p.rows;
  p.grid_x = std::min(needed, std::max<int64_t>(1, most / p.rows));
  return p;
}

inline FlatLaunchPlan flat_launch_plan(int64_t rows, int64_t cols, int elem_bytes,
                                       const std::vector<uintptr_t>& buffers, uintptr_t side, int64_t side_rows,
                                       int sm_count, int blocks_per_sm) {
  return with_grid(flat_layout(rows, cols, elem_bytes, buffers, side, side_rows), sm_count, blocks_per_sm);
}

}  // namespace dil_fast
