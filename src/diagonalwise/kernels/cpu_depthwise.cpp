// Direct depthwise convolution on the CPU: forward, input gradient, weight and bias gradients.
//
// Every call is 3D (N, C, D, H, W); 2D and 1D arrive with leading spatial sizes of 1. Weight
// (C * M, 1, KD, KH, KW) for a channel multiplier M: output channel o reads input channel o / M.
// The input is never copied as a whole; the loop order follows its layout:
// - channels innermost (channels_last: x.stride(1) == 1), multiplier 1 and at least one vector of
//   channels: register tiles of output columns x channel vectors take every tap; parallel over
//   output rows (input gradient: over input rows, by column phase when strided; weight gradient:
//   over fixed chunks of rows).
// - otherwise (NCDHW, any strided view, channels_last with a multiplier or fewer channels than
//   a vector), multiplier 1: channel blocks (a sample's volumes of one vector's worth of channels
//   turned channels-innermost in cache, then the tiles above); 1D rows of 64 columns and more at
//   stride 1, row by row.
//   Multiplier > 1: stride 1 as whole planes (each (sample, channel) volume copied once into a
//   padded buffer, one long loop per tap); strided, per (sample, channel) row, a vector over the
//   width per tap.
// The backward reads x and dy once for the three gradients where the order allows (planes,
// channel blocks, row loops). Calls moving more than 16 MB write the channels-inner forward's
// output and input gradient with streaming stores (float, double from the tiles; bfloat16,
// half: rows staged; OutputStreaming); smaller ones through the caches, each row's tiles
// prefetching for writing the next row's lines (OutputStore).
// Accumulation is in at::opmath_type (float for float, bfloat16, half; double for double). The
// weight gradient reduces in a fixed order: per channel in sample/row order (width-inner), or in
// a fixed number of row chunks summed in chunk order (channels-inner), so for a given thread
// count it does not depend on thread timing.
#include "cpu_depthwise.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstring>
#include <limits>
#include <new>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

bool poison_outputs = false;  // set_poison_outputs: outputs and Buffers start as NaN

// The kernels' buffers: their vectors start on cache lines (from std::allocator, 16-byte
// aligned, every 64-byte load and store of the channel blocks straddled two lines), and
// `Buffer<T> b(n)` leaves its values uninitialized (the channel blocks' zero fill cost 9% of a
// bfloat16 forward; v14 in cpu_direct_notes.md); `b(n, value)` fills. Under set_poison_outputs
// they start as NaN, so a value read before it is written shows up in the tests.
template <typename T>
struct CacheLineAllocator {
  using value_type = T;
  CacheLineAllocator() = default;
  template <typename U>
  CacheLineAllocator(const CacheLineAllocator<U>&) {}
  T* allocate(size_t n) {
    T* p = static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(64)));
    if constexpr (std::is_floating_point_v<T>)
      if (poison_outputs) std::fill_n(p, n, std::numeric_limits<T>::quiet_NaN());
    return p;
  }
  void deallocate(T* p, size_t) { ::operator delete(p, std::align_val_t(64)); }
  template <typename U>
  void construct(U* p) {
    ::new (static_cast<void*>(p)) U;  // default-initialized: no zero fill
  }
  template <typename U, typename... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
  bool operator==(const CacheLineAllocator&) const { return true; }
  bool operator!=(const CacheLineAllocator&) const { return false; }
};
template <typename T>
using Buffer = std::vector<T, CacheLineAllocator<T>>;

at::Tensor allocate(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor t = at::empty(sizes, options);
  if (poison_outputs) t.fill_(std::numeric_limits<double>::quiet_NaN());
  return t;
}

struct Geometry {
  int64_t N, C, M, O;
  int64_t D, H, W, OD, OH, OW;
  int64_t KD, KH, KW, SD, SH, SW, PD, PH, PW, DD, DH, DW;
  int64_t taps() const { return KD * KH * KW; }
};

// Strides of a 5-D tensor, in elements.
struct Strides {
  int64_t n, c, d, h, w;
  explicit Strides(const at::Tensor& t)
      : n(t.stride(0)), c(t.stride(1)), d(t.stride(2)), h(t.stride(3)), w(t.stride(4)) {}
  Strides(int64_t n, int64_t c, int64_t d, int64_t h, int64_t w) : n(n), c(c), d(d), h(h), w(w) {}
};

Geometry geometry(const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef stride,
                  at::IntArrayRef padding, at::IntArrayRef dilation, at::IntArrayRef out_size) {
  TORCH_CHECK(x.dim() == 5 && weight.dim() == 5 && weight.size(1) == 1,
              "cpu_depthwise: a 5-D input and a (C * M, 1, KD, KH, KW) weight expected, got ",
              x.sizes(), " and ", weight.sizes());
  TORCH_CHECK(x.size(1) > 0 && weight.size(0) % x.size(1) == 0,
              "cpu_depthwise: the weight's ", weight.size(0),
              " output channels are not a multiple of the input's ", x.size(1));
  TORCH_CHECK(x.scalar_type() == weight.scalar_type(), "cpu_depthwise: the input is ",
              x.scalar_type(), " and the weight ", weight.scalar_type(), "; give both one dtype");
  TORCH_CHECK(stride.size() == 3 && padding.size() == 3 && dilation.size() == 3 &&
                  out_size.size() == 3,
              "cpu_depthwise: 3 strides, paddings, dilations and output sizes expected");
  for (int64_t i = 0; i < 3; ++i)
    TORCH_CHECK(stride[i] > 0 && dilation[i] > 0 && padding[i] >= 0,
                "cpu_depthwise: strides and dilations must be positive and padding not negative, "
                "got stride ", stride, ", padding ", padding, ", dilation ", dilation);
  Geometry g;
  g.N = x.size(0);
  g.C = x.size(1);
  g.O = weight.size(0);
  g.M = g.O / g.C;
  g.D = x.size(2);
  g.H = x.size(3);
  g.W = x.size(4);
  g.OD = out_size[0];
  g.OH = out_size[1];
  g.OW = out_size[2];
  g.KD = weight.size(2);
  g.KH = weight.size(3);
  g.KW = weight.size(4);
  g.SD = stride[0];
  g.SH = stride[1];
  g.SW = stride[2];
  g.PD = padding[0];
  g.PH = padding[1];
  g.PW = padding[2];
  g.DD = dilation[0];
  g.DH = dilation[1];
  g.DW = dilation[2];
  return g;
}

// The output positions o in [lo, hi) whose input position o * s - p + k * d lies in [0, size).
inline void valid_range(int64_t size, int64_t out, int64_t s, int64_t p, int64_t kd, int64_t& lo,
                        int64_t& hi) {
  const int64_t offset = p - kd;  // input = o * s - offset
  lo = offset > 0 ? (offset + s - 1) / s : 0;
  const int64_t last = size - 1 + offset;  // o * s <= last
  hi = last < 0 ? 0 : std::min(out, last / s + 1);
  if (hi < lo) hi = lo;
}

// The output position o with o * s - p + k * d == i, or -1.
inline int64_t source(int64_t i, int64_t s, int64_t p, int64_t kd, int64_t out) {
  const int64_t num = i + p - kd;
  if (num < 0 || num % s != 0) return -1;
  const int64_t o = num / s;
  return o < out ? o : -1;
}

bool channels_inner(const at::Tensor& x) { return x.stride(1) == 1 && x.size(1) > 1; }

at::MemoryFormat format_of(const at::Tensor& x) {
  return channels_inner(x) ? at::MemoryFormat::ChannelsLast3d : at::MemoryFormat::Contiguous;
}

// 64-byte vectors of acc_t (GCC/Clang vector extensions): the tiled loops are written with
// them because the auto-vectorizer, given `#pragma omp simd` on the inner loop, vectorized the tap
// loop instead, with gathers (7x slower, measured on a 112x114 plane).
template <typename T>
struct Vector {
  typedef T type __attribute__((vector_size(64)));
};
template <typename T>
using vec_t = typename Vector<T>::type;
template <typename T>
inline vec_t<T> vload(const T* p) {
  vec_t<T> v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <typename T>
inline void vstore(T* p, vec_t<T> v) {
  std::memcpy(p, &v, sizeof v);
}
// Keeps v in a register from here on: GCC may fold the load that made it into every use instead
// (a 64-byte vector fits one register only with AVX-512).
template <typename T>
[[gnu::always_inline]] inline void keep_in_register([[maybe_unused]] vec_t<T>& v) {
#if defined(__AVX512F__)
  asm("" : "+v"(v));
#endif
}

// Channels per task (at most) of the per-channel loops below (weights turned over, sums reduced).
constexpr int64_t kChannelBlock = 16;

// Calls body(c0, c1) for blocks of `block` (<= kChannelBlock) of `channels` channels, on the
// thread pool when there are enough elements (`work_per_channel` each) to share: on a small
// layer these loops cost as much as the convolution when run in one thread.
template <typename Body>
void over_channel_blocks(int64_t channels, int64_t work_per_channel, const Body& body,
                         int64_t block = kChannelBlock) {
  const int64_t blocks = (channels + block - 1) / block;
  const int64_t grain =
      std::max<int64_t>(1, 16384 / (block * std::max<int64_t>(1, work_per_channel)));
  at::parallel_for(0, blocks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) body(b * block, std::min(channels, (b + 1) * block));
  });
}

// w ([O][taps]) as acc_t [tap][O] in rows of `step` >= O values, the layout the channels-inner
// loops read (each tap's weights over the channels, contiguous); `flipped`: tap t holds w's tap
// taps - 1 - t.
template <typename scalar_t, typename acc_t>
bool transposed_taps(const scalar_t* w, int64_t o0, int64_t o1, int64_t taps, int64_t step,
                     bool flipped, acc_t* wt);

template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
Buffer<acc_t> taps_outer(const scalar_t* w, int64_t O, int64_t taps, int64_t step,
                         bool flipped = false) {
  Buffer<acc_t> wt(taps * step);
  over_channel_blocks(O, taps, [&](int64_t o0, int64_t o1) {
    if (transposed_taps(w, o0, o1, taps, step, flipped, wt.data())) return;
    for (int64_t t = 0; t < taps; ++t) {
      const int64_t source = flipped ? taps - 1 - t : t;
      for (int64_t o = o0; o < o1; ++o) wt[t * step + o] = static_cast<acc_t>(w[o * taps + source]);
    }
  });
  return wt;
}

// ---------------------------------------------------------------------------------------------
// forward

// Lanes of one vector of acc_t: the channel block of the channels-inner tiles.
template <typename acc_t>
constexpr int64_t lanes() { return 64 / sizeof(acc_t); }

// The row length of the channels-inner tiles' [tap][channel] buffers (weights turned over,
// weight-gradient sums) for `channels` channels: one cache line more, so that a channel vector's
// taps lie in different L1 sets. At 1024 float channels a row is 4 KB and every tap of a vector
// fell in one set (8 ways), with the input pixels of the vector, 4 KB apart too (v20:
// 16x1024x7x7 weight gradient 1.3x).
template <typename acc_t>
constexpr int64_t tap_row_step(int64_t channels) { return channels + lanes<acc_t>(); }

// The column taps a tile reads: per tap, its element offset from the tile's first column's base
// and its index kw; taps left out are outside the input for the tile's columns.
struct ColumnTaps {
  const int64_t* offset;
  const int64_t* tap;
  int64_t count;
  // nonzero: the taps are 0 .. window - 1 on consecutive columns, one column step apart (stride
  // 1, no dilation), so an input vector serves every tap that reads it (forward_tile_window);
  // flipped: tap kw on the window's column window - 1 - kw (the stride-1 input gradient)
  int64_t window = 0;
  bool flipped = false;
  // window tiles: the window columns [lo, hi) that lie inside the row (the others are skipped)
  int64_t lo = 0, hi = std::numeric_limits<int64_t>::max();
};

// The forward's column taps (offsets kw * DW * column stride, from input column ow * SW - PW):
// all of them for interior columns, and a border column's valid range.
class WindowTaps {
 public:
  WindowTaps(const Geometry& g, int64_t column_stride) : g_(g), offset_(g.KW), tap_(g.KW) {
    for (int64_t kw = 0; kw < g.KW; ++kw) {
      offset_[kw] = kw * g.DW * column_stride;
      tap_[kw] = kw;
    }
  }
  ColumnTaps all() const {
    return {offset_.data(), tap_.data(), g_.KW, g_.SW == 1 && g_.DW == 1 ? g_.KW : 0};
  }
  // the taps kw in [lo, hi) that keep output column ow inside the input row
  ColumnTaps of_column(int64_t ow) const {
    const int64_t start = ow * g_.SW - g_.PW;  // input column of tap 0
    const int64_t lo = start >= 0 ? 0 : (-start + g_.DW - 1) / g_.DW;
    const int64_t hi = start > g_.W - 1 ? 0 : std::min(g_.KW, (g_.W - 1 - start) / g_.DW + 1);
    return {offset_.data() + lo, tap_.data() + lo, std::max<int64_t>(0, hi - lo)};
  }

 private:
  const Geometry& g_;
  std::vector<int64_t> offset_, tap_;
};

// The output columns [first, last) whose every tap falls inside the input row: the interior,
// where the tiled loops need no bounds checks.
inline void interior_columns(const Geometry& g, int64_t& first, int64_t& last) {
  first = std::min(g.OW, (g.PW + g.SW - 1) / g.SW);
  last = g.W - 1 + g.PW - (g.KW - 1) * g.DW;
  last = last < 0 ? 0 : std::max(first, std::min(g.OW, last / g.SW + 1));
}

// For output row (n, od, oh): the input rows (kd, kh) inside the input, as pairs (element offset
// of the row in x, index of its first tap); returns how many.
inline int64_t input_rows(const Geometry& g, const Strides& xs, int64_t n, int64_t od,
                          int64_t oh, int64_t* offsets) {
  int64_t count = 0;
  for (int64_t kd = 0; kd < g.KD; ++kd) {
    const int64_t id = od * g.SD - g.PD + kd * g.DD;
    if (id < 0 || id >= g.D) continue;
    for (int64_t kh = 0; kh < g.KH; ++kh) {
      const int64_t ih = oh * g.SH - g.PH + kh * g.DH;
      if (ih < 0 || ih >= g.H) continue;
      offsets[2 * count] = n * xs.n + id * xs.d + ih * xs.h;
      offsets[2 * count + 1] = (kd * g.KH + kh) * g.KW;
      ++count;
    }
  }
  return count;
}

// input_rows of output row r of the channels-inner order (the rows of (n, od, oh)).
inline int64_t input_rows_of(const Geometry& g, const Strides& xs, int64_t r, int64_t* offsets) {
  return input_rows(g, xs, r / (g.OD * g.OH), (r / g.OH) % g.OD, r % g.OH, offsets);
}

// A dense span of memory into the caches (prefetch hints: no fault, no effect on results): rows
// that the next tiles read (PrefetchRows says where); the channel blocks' whole volumes into L1
// where they fit in 32 KB (10x10 and 20x20 planes 1.1x-1.2x), else into L2 (into L1: weight
// gradient 0.9x on 112x112 planes). On
// x86 as asm statements: GCC -O3 once dropped every __builtin_prefetch of this file after a
// change elsewhere in it (v10).
template <bool ToL1, typename T>
inline void prefetch(const T* p, int64_t count) {
  const char* bytes = reinterpret_cast<const char*>(p);
  for (int64_t i = 0; i < count * static_cast<int64_t>(sizeof(T)); i += 64) {
#if defined(__x86_64__) || defined(__i386__)
    if constexpr (ToL1)
      asm volatile("prefetcht0 %0" : : "m"(bytes[i]));
    else
      asm volatile("prefetcht1 %0" : : "m"(bytes[i]));
#else
    __builtin_prefetch(bytes + i, 0, ToL1 ? 3 : 2);
#endif
  }
}

// The line at p into the caches for writing (fetched owned: the store that follows does not wait
// for its line to be read first). Like a prefetch hint it does not fault.
template <typename T>
inline void prefetch_for_writing(const T* p) {
#if defined(__x86_64__) || defined(__i386__)
  asm volatile("prefetchw %0" : : "m"(*reinterpret_cast<const char*>(p)));
#else
  __builtin_prefetch(p, 1, 3);
#endif
}

// How the tiles store an output vector: `stream`, non-temporally (out_t == acc_t only, on a cache
// line; see OutputStreaming::direct); else through the caches, the line `ahead` elements on (the
// same column of the thread's next output row; 0: none) first prefetched for writing. A store
// to a line that is not in the caches waits for it to be read from memory, and the allocator
// hands outputs memory that other tensors last touched, often cold: the stride-2 input gradient
// of 8x144x40x40 channels_last took 0.82 ms after a call that left its memory cold, 0.19 ms warm
// (0.58 ms and 0.19 ms with the next row prefetched; v21 in cpu_direct_notes.md).
struct OutputStore {
  bool stream = false;
  int64_t ahead = 0;
};

// Rows to prefetch, by column spans. The forward and the weight gradient prefetch the rows that
// the next row reads and the current one does not, a tile at a time (each tile of the current row
// takes its span of their columns), so memory streams while the row computes: whole rows at a
// row's start, as up to v9, stalled the core once its outstanding misses were full, memory and
// arithmetic taking turns (strided channels_last forwards at 0.6x-0.7x native; v10 in
// cpu_direct_notes.md). The input gradient prefetches its row's new dy rows whole at the row's
// start: from its tiles, the call made their code slower (stride 2: 0.7x). Without prefetches the
// hardware prefetcher alone left the tiles waiting (16x128x56x56 forward 3.2 ms, 2.0 ms with; v6).
// Into L1 or L2 (`to_l1`): the float and bfloat16 weight gradient's x and dy rows into L2
// (float 1.1x-1.8x faster than into L1, v16; bfloat16 0.98x-1.1x, v19; half's, converted to
// float rows first, stay in L1), the strided forwards' too (1.2x-1.6x); the stride-1 forward's
// and the input gradient's into L1 (v16 in cpu_direct_notes.md; v10 had found L2 slower for the
// strided forwards).
template <typename T>
class PrefetchRows {
 public:
  PrefetchRows(const T* data, int64_t column_stride, int64_t columns, bool to_l1)
      : data_(data), column_stride_(column_stride), columns_(columns), to_l1_(to_l1) {}

  // The rows (pairs: offset, first tap; as input_rows/receiving_rows give them) that are not
  // among `read` (the rows of the row before them).
  void set(const int64_t* rows, int64_t count, const int64_t* read, int64_t read_count) {
    rows_.clear();
    for (int64_t k = 0; k < count; ++k) {
      bool known = false;
      for (int64_t j = 0; j < read_count; ++j) known |= read[2 * j] == rows[2 * k];
      if (!known) rows_.push_back(rows[2 * k]);
    }
  }

  void clear() { rows_.clear(); }
  void add(int64_t offset) { rows_.push_back(offset); }

  // Columns [begin, end) (clipped to the rows) of channels [c0, c0 + channels) of the rows.
  void prefetch_columns(int64_t begin, int64_t end, int64_t c0, int64_t channels) const {
    begin = std::max<int64_t>(0, begin);
    end = std::min(end, columns_);
    for (const int64_t row : rows_)
      for (int64_t column = begin; column < end; ++column) {
        const T* span = data_ + row + column * column_stride_ + c0;
        if (to_l1_)
          prefetch<true>(span, channels);
        else
          prefetch<false>(span, channels);
      }
  }

 private:
  const T* data_;
  int64_t column_stride_, columns_;
  bool to_l1_;
  std::vector<int64_t> rows_;
};

// `count` elements to acc_t. bfloat16 is the top half of a float, so its conversion is a shift
// of the raw bits, which the compiler vectorizes (c10's conversion operator it does not).
template <typename scalar_t, typename acc_t>
inline void convert_span(const scalar_t* in, acc_t* out, int64_t count) {
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
#pragma omp simd
    for (int64_t i = 0; i < count; ++i)
      out[i] = __builtin_bit_cast(float, static_cast<uint32_t>(in[i].x) << 16);
  } else {
#pragma omp simd
    for (int64_t i = 0; i < count; ++i) out[i] = static_cast<acc_t>(in[i]);
  }
}

// A float as out_t. For bfloat16: round to nearest even on the raw bits, NaN kept a (quiet)
// NaN, which vectorizes where c10's converting constructor does not.
template <typename out_t, typename acc_t>
inline out_t from_acc(acc_t value) {
  if constexpr (std::is_same_v<out_t, c10::BFloat16>) {
    const uint32_t bits = __builtin_bit_cast(uint32_t, value);
    const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
    const bool nan = (bits & 0x7FFFFFFFu) > 0x7F800000u;
    return c10::BFloat16(static_cast<uint16_t>(nan ? 0x7FC0u : rounded), c10::BFloat16::from_bits());
  } else {
    return static_cast<out_t>(value);
  }
}

// half: the valid input rows of output rows (see input_rows) converted to acc_t, each W x C
// dense (bfloat16, since v19, is widened in the tiles' registers instead: vload_as). The rows
// are kept in 2 * KD * KH slots, tagged by where they start in x, so the next output row, which
// reads KH - 1 of the same rows at stride 1, converts only its new one.
// (Staging float rows too, with zero columns for whole windows at the borders, cost more than it
// saved: 0.5x-0.95x on 3x3 and 5x5 layers, 1.16x on one 7x7, v9 in cpu_direct_notes.md.)
template <typename scalar_t, typename acc_t>
class ConvertedRows {
 public:
  ConvertedRows(const Geometry& g, bool needed)
      : slots_(needed ? 2 * g.KD * g.KH : 0), row_size_(g.W * g.C),
        data_(slots_ * row_size_), tag_(slots_, -1), used_(slots_, 0) {}

  // Rewrites offsets[2k] (the rows' offsets in x) to point into data(), converting the rows
  // not held.
  void convert(const scalar_t* x, const Strides& xs, const Geometry& g, int64_t nrows,
               int64_t* offsets) {
    ++clock_;
    std::vector<int64_t>& slot = slot_of_;
    slot.assign(nrows, -1);
    for (int64_t k = 0; k < nrows; ++k)
      for (int64_t s = 0; s < slots_; ++s)
        if (tag_[s] == offsets[2 * k]) {
          slot[k] = s;
          used_[s] = clock_;
        }
    for (int64_t k = 0; k < nrows; ++k) {
      if (slot[k] < 0) {  // the least recently used slot that this row does not read
        int64_t s = 0;
        for (int64_t t = 1; t < slots_; ++t)
          if (used_[t] < used_[s]) s = t;
        acc_t* row = data_.data() + s * row_size_;
        for (int64_t iw = 0; iw < g.W; ++iw)
          convert_span(x + offsets[2 * k] + iw * xs.w, row + iw * g.C, g.C);
        tag_[s] = offsets[2 * k];
        used_[s] = clock_;
        slot[k] = s;
      }
      offsets[2 * k] = slot[k] * row_size_;
    }
  }

  const acc_t* data() const { return data_.data(); }

 private:
  int64_t slots_, row_size_, clock_ = 0;
  Buffer<acc_t> data_;
  std::vector<int64_t> tag_, used_, slot_of_;
};

typedef uint16_t half_bits_t __attribute__((vector_size(32)));
typedef uint32_t bits_t __attribute__((vector_size(64)));

// 16 floats as bfloat16 bits, in registers: from_acc's rounding (to nearest even on the raw bits,
// NaN kept a quiet NaN).
inline half_bits_t bfloat16_bits(vec_t<float> v) {
  const bits_t bits = bits_t(v);
  const bits_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  const bits_t nan = (bits & 0x7FFFFFFFu) > 0x7F800000u;  // all ones where NaN
  const bits_t result = (rounded & ~nan) | (bits_t{} + 0x7FC0u & nan);
  return __builtin_convertvector(result, half_bits_t);
}

// A vector of acc_t from the lanes<acc_t>() values of in_t at p: bfloat16 (a float's top half)
// widened in registers, where converting whole rows to float first took one more pass through
// the caches and twice the cache for the tiles' reads (v19 in cpu_direct_notes.md).
// A bfloat16 pair of a channel block's buffer (gather_pairs), read as its upper half: the value
// at its own column, as a float.
struct UpperHalves {
  uint32_t pair;
};

template <typename acc_t, typename in_t>
inline vec_t<acc_t> vload_as(const in_t* p) {
  if constexpr (std::is_same_v<in_t, acc_t>) {
    return vload(p);
  } else if constexpr (std::is_same_v<in_t, UpperHalves>) {
    static_assert(std::is_same_v<acc_t, float>);
    bits_t pairs;
    std::memcpy(&pairs, p, sizeof pairs);
    return vec_t<float>(pairs & 0xFFFF0000u);
  } else {
    static_assert(std::is_same_v<in_t, c10::BFloat16> && std::is_same_v<acc_t, float>);
#if defined(__AVX512F__)
    // one vpmovzxwd: GCC 12 (tuning for znver3 here) split __builtin_convertvector's widening
    // into 8-lane halves put together again, 4 instructions a vector (v20: 1.1x-1.4x)
    return vec_t<float>(_mm512_slli_epi32(
        _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
#else
    half_bits_t narrow;
    std::memcpy(&narrow, p, sizeof narrow);
    return vec_t<float>(__builtin_convertvector(narrow, bits_t) << 16);
#endif
  }
}

// What the channels-inner tiles read of a scalar_t tensor: its own elements (float, double, and
// bfloat16 through vload_as), or, for half (kConvertedRows), rows converted to acc_t first
// (ConvertedRows).
template <typename scalar_t>
constexpr bool kConvertedRows = std::is_same_v<scalar_t, c10::Half>;
template <typename scalar_t>
using tile_input_t =
    std::conditional_t<kConvertedRows<scalar_t>, at::opmath_type<scalar_t>, scalar_t>;

// Store a vector of acc_t as out_t: bfloat16 converted in registers (through an array, lane by
// lane, the compiler spilled the tile's accumulators: a quarter of the bfloat16 forward's time),
// with AVX512_BF16 by its instruction (store_columns' rounding, v19), else on the raw bits; half
// each lane through from_acc; as `store` says (OutputStore).
template <typename out_t, typename acc_t>
inline void store_vector(out_t* p, vec_t<acc_t> v, OutputStore store = {}) {
  if (store.ahead) prefetch_for_writing(p + store.ahead);
  if constexpr (std::is_same_v<out_t, acc_t>) {
#if defined(__AVX512F__)
    if constexpr (std::is_same_v<acc_t, float>) {
      if (store.stream) return _mm512_stream_ps(p, __m512(v));
    } else if constexpr (std::is_same_v<acc_t, double>) {
      if (store.stream) return _mm512_stream_pd(p, __m512d(v));
    }
#endif
    vstore(p, v);
  } else if constexpr (std::is_same_v<out_t, c10::BFloat16>) {
#ifdef __AVX512BF16__
    const __m256bh narrow = _mm512_cvtneps_pbh(__m512(v));
#else
    const half_bits_t narrow = bfloat16_bits(v);
#endif
    std::memcpy(p, &narrow, sizeof narrow);
  } else {
    acc_t values[lanes<acc_t>()];
    std::memcpy(values, &v, sizeof v);
#pragma omp simd
    for (int64_t j = 0; j < lanes<acc_t>(); ++j) p[j] = from_acc<out_t>(values[j]);
  }
}

// Below this many bytes read and written by one call, outputs are stored through the caches; above
// it, where every store fills a whole cache line, with non-temporal (streaming) stores: a store
// through the caches first reads its line from memory, so a large output cost its size twice in
// reads and writes. On this 32 MB-L3 EPYC (v17 in cpu_direct_notes.md), with the output read
// back right after: float32 channels_last forwards of 51 MB (input and output) 1.2x-1.4x, input
// gradients of 19-77 MB 1.2x-1.5x; forwards of 6-13 MB, whose data stay in the L3 between
// calls, 0.8x (the threshold keeps those cached).
int64_t streaming_threshold = int64_t(16) << 20;

// Where row r of rows in (sample, depth, height) order, `depth` x `height` per sample, starts.
inline int64_t row_start(int64_t r, int64_t depth, int64_t height, const Strides& s) {
  return r / (depth * height) * s.n + (r / height) % depth * s.d + r % height * s.h;
}

// How a channels-inner kernel writes its output (as the kernels allocate it: columns
// `column_stride` elements apart, rows `row_stride`, `channels` per column) in a call moving
// `bytes`: through the caches up to streaming_threshold, above it with streaming stores where
// they fill whole cache lines. `direct`: float and double, the tiles' stores streamed (columns of
// whole lines). `staged`: bfloat16 and half, whose tiles store half lines (streamed where they
// stood, the two halves of a line written a row apart: 0.68x; v17 and v18 in
// cpu_direct_notes.md), each row staged in a buffer and streamed whole by stream_row (dense rows
// of whole lines). Either way each thread calls stream_fence() after its last streamed store.
template <typename scalar_t>
struct OutputStreaming {
  bool direct = false, staged = false;

  OutputStreaming(const scalar_t* out, int64_t column_stride, int64_t row_stride,
                  int64_t channels, int64_t bytes) {
#if defined(__AVX512F__)
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int64_t size = sizeof(scalar_t);
    if (reinterpret_cast<uintptr_t>(out) % 64 != 0 || bytes <= streaming_threshold) return;
    if constexpr (std::is_same_v<scalar_t, acc_t>)
      direct = sizeof(vec_t<acc_t>) == 64 && column_stride * size % 64 == 0 &&
               channels % lanes<acc_t>() == 0;  // a channel tail's vector is off the lines
    else
      staged = column_stride == channels && row_stride * size % 64 == 0;
#endif
  }
  bool any() const { return direct || staged; }

  // How row r of a thread's rows [r, end) stores its tiles (OutputStore): rows in (sample, depth,
  // height) order, `depth` x `height` of them per sample, `strides` the output's.
  OutputStore row_store(int64_t r, int64_t end, int64_t depth, int64_t height,
                        const Strides& strides) const {
    if (any() || r + 1 >= end) return {direct, 0};
    return {false, row_start(r + 1, depth, height, strides) - row_start(r, depth, height, strides)};
  }
};

// `count` elements from a staged row (a Buffer) to `out`, both on cache lines, count * sizeof(T) a
// whole number of lines: non-temporal stores.
template <typename T>
inline void stream_row(const T* row, T* out, int64_t count) {
#if defined(__AVX512F__)
  const char* from = reinterpret_cast<const char*>(row);
  char* to = reinterpret_cast<char*>(out);
  for (int64_t i = 0; i < count * int64_t(sizeof(T)); i += 64)
    _mm512_stream_si512(reinterpret_cast<__m512i*>(to + i),
                        _mm512_load_si512(reinterpret_cast<const __m512i*>(from + i)));
#else
  std::copy_n(row, count, out);
#endif
}

// Non-temporal stores are weakly ordered: fenced before the output is read (by another thread).
inline void stream_fence() {
#if defined(__AVX512F__)
  _mm_sfence();
#endif
}

template <int64_t V>
using constant = std::integral_constant<int64_t, V>;

// Calls tile(TW, NB, column, c0, taps) (compile-time sizes as std::integral_constant) over the
// output columns [begin, end) for the NB channel vectors at c0: tiles of 16 / NB columns (16
// accumulators in registers), then of 8, 4, 2, 1 for what is left.
template <int64_t NB, int64_t TW = 16 / NB, typename Tile>
inline void tile_columns(int64_t begin, int64_t end, int64_t c0, const ColumnTaps& taps,
                         const Tile& tile) {
  int64_t column = begin;
  for (; column + TW <= end; column += TW) tile(constant<TW>{}, constant<NB>{}, column, c0, taps);
  if constexpr (TW > 1) tile_columns<NB, TW / 2>(column, end, c0, taps, tile);
}

// The window widths with window tiles (forward_tile_window, weight_grad_tile_window).
constexpr bool has_window_tiles(int64_t width) { return width == 3 || width == 5 || width == 7; }

// Where the rows the tiles read begin and end, for window tiles that reach past them: output
// column ow's window column c reads row column ow - pad + c (stride 1), inside iff in [0, width).
// `clamps` false: no window reaches past a row (the channel blocks' zero-padded rows; pad and
// width unused, and the tiles get the interior's taps as they are: copying them per tile with
// bounds that never clamp cost 3%-6% on 10x10 and 20x20 planes, v26). `widths`: the window tiles'
// widths in a row, in order (window_tile_widths); where empty, windows of 3 taps go in tiles
// 16 / NB wide (tile_row).
struct RowBounds {
  bool known = false;
  int64_t pad = 0, width = 0;
  std::vector<int64_t> widths;
  bool clamps = true;
};

// The widths of the window tiles (16 only for windows of 5 and 7 taps, 8, 7, 5, 4, 2, 1) that
// cover a row of `columns` output columns for windows of `window` taps at the least cost, each
// tile's cost the cycles of whichever bounds it per input row: its multiply-adds (one per cycle),
// its loads (as many, on their own port) or its sums' latency (4 cycles a multiply-add, TW chains
// of `window`: a narrow tile waits on it), plus `window` for the tile's own work (the weights
// loaded). Equal costs keep the wider tile first. A row of 10 columns thus goes in tiles of 5
// and 5, not 8 and 2 (v23 in cpu_direct_notes.md), of 14 in 7 and 7, of 28 in 8, 8, 8, 4.
inline std::vector<int64_t> window_tile_widths(int64_t columns, int64_t window) {
  constexpr int64_t kWidths[] = {16, 8, 7, 5, 4, 2, 1};
  auto cost = [&](int64_t w) {
    return std::max({w * window, 2 * window - 1 + w, 4 * window}) + window;
  };
  std::vector<int64_t> best(columns + 1, 0), first(columns + 1, 0);
  for (int64_t c = 1; c <= columns; ++c) {
    best[c] = std::numeric_limits<int64_t>::max();
    for (const int64_t w : kWidths)
      if (w <= c && (w < 16 || window >= 5) && best[c - w] + cost(w) < best[c]) {
        best[c] = best[c - w] + cost(w);
        first[c] = w;
      }
  }
  std::vector<int64_t> widths;
  for (int64_t c = columns; c > 0; c -= first[c]) widths.push_back(first[c]);
  return widths;
}

// Tile widths for tiles that cost by their number more than by their widths (the weight
// gradient's: 8 + 2 against 5 + 5 for rows of 10 was 0.92x on 5x5 windows, v23; the channel
// blocks', v26): rows of 7, 14 and 21 in 7s, else as many of 16 (where `sixteen`), 8, 7, 5, 4,
// 2, 1 as fit, in that order.
inline std::vector<int64_t> fewest_tile_widths(int64_t columns, bool sixteen) {
  std::vector<int64_t> widths;
  int64_t left = columns;
  for (const int64_t w : {columns % 7 == 0 && columns <= 21 ? int64_t(7) : int64_t(0),
                          sixteen ? int64_t(16) : int64_t(0), int64_t(8), int64_t(7), int64_t(5),
                          int64_t(4), int64_t(2), int64_t(1)})
    for (; w > 0 && left >= w; left -= w) widths.push_back(w);
  return widths;
}

// RowBounds of rows `width` long with `pad` columns of padding before them, for output rows of
// `columns` through windows of `window` taps; `wide`: windows of 3 taps in tiles as wide as those
// of 5 and 7 taps (tile_row); `weight_grad`: the weight gradient's tile widths.
inline RowBounds row_bounds(int64_t pad, int64_t width, int64_t columns, int64_t window,
                            bool wide, bool weight_grad = false) {
  RowBounds bounds{true, pad, width, {}};
  if (has_window_tiles(window) && (window >= 5 || wide))
    bounds.widths = weight_grad ? fewest_tile_widths(columns, window >= 5)
                                : window_tile_widths(columns, window);
  return bounds;
}

// One row of `columns` output columns through the channels-inner tiles: channel groups of 4
// vectors (then 2, then single ones) outermost, so each group walks the row at the pixel stride,
// which the prefetcher follows (pairs, v20: 32 float channels, two cache lines a pixel, had two
// walks each reading one line of every pixel; 1.1x-1.3x as one). With windows of 3, 5 or 7 taps
// and known bounds, every column in window tiles (16 / NB wide, then halves), the ones that
// reach past the row's ends skipping the columns outside: there a border column alone costs as
// much as a tile (v9: 5x5 and 7x7 layers 1.1x-2.2x; v20: 3x3 layers 1.0x-1.3x, which in v9, with
// one border column a side, were no faster); otherwise the interior columns [first, last) in
// tiles with `interior` taps and each other column alone with border(column)'s. Window tiles
// take one channel vector at a time, so their width need not shrink with NB: windows of 5 and 7
// taps, which load TW + KW - 1 columns for TW outputs, in tiles of up to 16 (bounds.widths):
// 5x5 and 7x7 layers forward 1.0x-1.7x, backward 1.1x-1.8x (v21). Windows of 3 taps the same
// without 16 where `wide`: the weight gradient (each tile adds its sums to the chunk's once per
// row and tap, three times for a 7-column row in tiles of 4, 2 and 1; 1.2x-1.5x on 5x5 to 14x14
// maps) and the forward on rows of up to 28 columns (1.05x-1.2x; 0.94x on 56); else 16 / NB
// wide, then halves (16 wide: 56x56 forward 0.79x). v22 in cpu_direct_notes.md.
// `channels` past the last whole vector (54 = 3 x 16 + 6) go through one vector more, overlapping
// the one before (c0 = channels - lanes, not a multiple of lanes): the tiles that store their
// sums write those channels twice with the same values, the weight gradient's takes the tail's
// sums apart (tail_sums). One value at a time, the 6 took three times the 48's time (v32).
template <typename Border, typename Tile>
inline void tile_row(int64_t columns, int64_t first, int64_t last, int64_t channels,
                     int64_t lanes, const ColumnTaps& interior, const Border& border,
                     const Tile& tile, const RowBounds& bounds = RowBounds{}) {
  auto window_tile = [&](auto nb, auto tw, int64_t& column, int64_t c0) {
    if (bounds.clamps) {
      ColumnTaps taps = interior;
      taps.lo = std::max<int64_t>(0, bounds.pad - column);
      taps.hi = bounds.width + bounds.pad - column;
      tile(tw, nb, column, c0, taps);
    } else {
      tile(tw, nb, column, c0, interior);
    }
    column += decltype(tw)::value;
  };
  auto windows = [&](auto nb, auto tw, int64_t& column, int64_t c0) {
    while (column + decltype(tw)::value <= columns) window_tile(nb, tw, column, c0);
  };
  auto group = [&](auto nb, int64_t c0) {
    constexpr int64_t NB = decltype(nb)::value;
    if (has_window_tiles(interior.window) && bounds.known) {
      int64_t column = 0;
      for (const int64_t width : bounds.widths) switch (width) {
          case 16: window_tile(nb, constant<16>{}, column, c0); break;
          case 8: window_tile(nb, constant<8>{}, column, c0); break;
          case 7: window_tile(nb, constant<7>{}, column, c0); break;
          case 5: window_tile(nb, constant<5>{}, column, c0); break;
          case 4: window_tile(nb, constant<4>{}, column, c0); break;
          case 2: window_tile(nb, constant<2>{}, column, c0); break;
          default: window_tile(nb, constant<1>{}, column, c0);
        }
      windows(nb, constant<16 / NB>{}, column, c0);
      if constexpr (NB == 1) windows(nb, constant<8>{}, column, c0);
      windows(nb, constant<4>{}, column, c0);
      windows(nb, constant<2>{}, column, c0);
      windows(nb, constant<1>{}, column, c0);
      return;
    }
    for (int64_t column = 0; column < columns; ++column) {
      if (column == first && first < last) {
        tile_columns<NB>(first, last, c0, interior, tile);
        column = last - 1;
        continue;
      }
      tile_columns<NB, 1>(column, column + 1, c0, border(column), tile);
    }
  };
  const int64_t blocks = channels / lanes;
  int64_t block = 0;
  for (; block + 4 <= blocks; block += 4) group(constant<4>{}, block * lanes);
  for (; block + 2 <= blocks; block += 2) group(constant<2>{}, block * lanes);
  // one call site for single vectors, the tail's among them (a second cost 56x56 rows 5%)
  const int64_t singles_end = blocks + (blocks * lanes < channels);
  for (; block < singles_end; ++block)
    group(constant<1>{}, std::min(block * lanes, channels - lanes));
}

// Calls window_tile(KW, CLAMP) (std::integral_constant) for window taps of 3, 5 or 7 columns,
// CLAMP where the tile's window reaches past the row (taps.lo, taps.hi); false for other taps.
template <int64_t TW, typename WindowTile>
[[gnu::always_inline]] inline bool with_window(const ColumnTaps& taps,
                                               const WindowTile& window_tile) {
  auto call = [&](auto kw) __attribute__((always_inline)) {
    constexpr int64_t KW = decltype(kw)::value;
    if (taps.lo > 0 || taps.hi < TW + KW - 1)
      window_tile(kw, std::true_type{});
    else
      window_tile(kw, std::false_type{});
    return true;
  };
  switch (taps.window) {
    case 3: return call(constant<3>{});
    case 5: return call(constant<5>{});
    case 7: return call(constant<7>{});
  }
  return false;
}

// forward_tile for a whole window of KW taps on consecutive columns: input column c of a row
// feeds output columns c - kw, so each input vector is loaded once per row for all its taps
// (forward_tile loads it once per tap: KW loads where one does, and this CPU loads one 64-byte
// vector per cycle, as many as it multiplies). The sums run in forward_tile's order. One channel
// vector at a time: taking the NB vectors of a column together (more independent sums) was
// 4-9% faster on 7x7 planes but 12-16% slower on 28x28 and 56x56 (v9 in cpu_direct_notes.md).
template <typename out_t, typename acc_t, int64_t TW, int64_t NB, int64_t KW, bool CLAMP,
          typename in_t>
[[gnu::always_inline]] inline void forward_tile_window(
    const in_t* x, int64_t column_step, const acc_t* wt, int64_t wt_step, const acc_t* bias,
    out_t* y, int64_t ysw, const int64_t* row_offsets, int64_t nrows, bool flipped, int64_t lo,
    int64_t hi, OutputStore store) {
  constexpr int64_t L = lanes<acc_t>();
  for (int64_t j = 0; j < NB; ++j) {
    vec_t<acc_t> acc[TW];
    const vec_t<acc_t> b = vload(bias + j * L);
#pragma GCC unroll 16
    for (int64_t i = 0; i < TW; ++i) acc[i] = b;
    for (int64_t r = 0; r < nrows; ++r) {
      const in_t* xc = x + row_offsets[2 * r] + j * L;
      const acc_t* wrow = wt + row_offsets[2 * r + 1] * wt_step + j * L;
      vec_t<acc_t> wv[KW];
#pragma GCC unroll 8
      for (int64_t k = 0; k < KW; ++k) wv[k] = vload(wrow + (flipped ? KW - 1 - k : k) * wt_step);
#pragma GCC unroll 32
      for (int64_t c = 0; c < TW + KW - 1; ++c, xc += column_step) {
        if (CLAMP && (c < lo || c >= hi)) continue;
        vec_t<acc_t> xv = vload_as<acc_t>(xc);
        // GCC folded this load into each of the column's KW multiply-adds: KW loads where one
        // does (v24: channels_last forwards on 10x10 and 5x5 maps 1.05x-1.15x)
        keep_in_register<acc_t>(xv);
#pragma GCC unroll 8
        for (int64_t k = 0; k < KW; ++k)
          if (c - k >= 0 && c - k < TW) acc[c - k] += xv * wv[k];
      }
    }
#pragma GCC unroll 16
    for (int64_t i = 0; i < TW; ++i)
      store_vector<out_t, acc_t>(y + i * ysw + j * L, acc[i], store);
  }
}

// TW consecutive output columns x NB vectors of channels: the column taps of the input rows in
// row_offsets (pairs: the row's offset, its first tap's index), with x, wt, bias and y already
// at the tile's first channel and x at the first column's base. The accumulators stay in
// registers while every tap streams through them. x: acc_t, or bfloat16 (see vload_as).
template <typename out_t, typename acc_t, int64_t TW, int64_t NB, typename in_t>
[[gnu::always_inline]] inline void forward_tile(
    const in_t* x, int64_t column_step, const acc_t* wt, int64_t wt_step, const acc_t* bias,
    out_t* y, int64_t ysw, const int64_t* row_offsets, int64_t nrows, const ColumnTaps& taps,
    OutputStore store = {}) {
  // the window's first column: tap 0's, or the last tap's when flipped (taps without a window
  // may be none)
  const in_t* xw = taps.window ? x + taps.offset[taps.flipped ? taps.count - 1 : 0] : x;
  if (with_window<TW>(taps, [&](auto kw, auto clamp) __attribute__((always_inline)) {
        forward_tile_window<out_t, acc_t, TW, NB, decltype(kw)::value, decltype(clamp)::value>(
            xw, column_step, wt, wt_step, bias, y, ysw, row_offsets, nrows, taps.flipped, taps.lo,
            taps.hi, store);
      }))
    return;
  constexpr int64_t L = lanes<acc_t>();
  vec_t<acc_t> acc[TW][NB];
#pragma GCC unroll 4
  for (int64_t j = 0; j < NB; ++j) {
    const vec_t<acc_t> b = vload(bias + j * L);
#pragma GCC unroll 16
    for (int64_t i = 0; i < TW; ++i) acc[i][j] = b;
  }
  for (int64_t r = 0; r < nrows; ++r) {
    const in_t* xrow = x + row_offsets[2 * r];
    const acc_t* wrow = wt + row_offsets[2 * r + 1] * wt_step;
    for (int64_t t = 0; t < taps.count; ++t) {
      const in_t* xp = xrow + taps.offset[t];
      const acc_t* wp = wrow + taps.tap[t] * wt_step;
#pragma GCC unroll 4
      for (int64_t j = 0; j < NB; ++j) {
        const vec_t<acc_t> wv = vload(wp + j * L);
#pragma GCC unroll 16
        for (int64_t i = 0; i < TW; ++i)
          acc[i][j] += vload_as<acc_t>(xp + i * column_step + j * L) * wv;
      }
    }
  }
#pragma GCC unroll 16
  for (int64_t i = 0; i < TW; ++i)
#pragma GCC unroll 4
    for (int64_t j = 0; j < NB; ++j)
      store_vector<out_t, acc_t>(y + i * ysw + j * L, acc[i][j], store);
}

// Forward, channels innermost, multiplier 1, at least one vector of channels: per output row,
// tiles of output columns x channel vectors through forward_tile (see tile_row for the border
// columns and the channel tail).
template <typename scalar_t>
void forward_channels_inner_tiled(const scalar_t* x, Strides xs, const scalar_t* w,
                                  const scalar_t* b, scalar_t* y, Strides ys, const Geometry& g,
                                  bool flipped = false) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int64_t L = lanes<acc_t>();
  using in_t = tile_input_t<scalar_t>;
  const int64_t wt_step = tap_row_step<acc_t>(g.O);
  const Buffer<acc_t> wt = taps_outer(w, g.O, g.taps(), wt_step, flipped);
  Buffer<acc_t> bias(g.O, acc_t(0));
  for (int64_t o = 0; b && o < g.O; ++o) bias[o] = static_cast<acc_t>(b[o]);
  int64_t first, last;
  interior_columns(g, first, last);
  const int64_t rows = g.N * g.OD * g.OH;
  const int64_t xsw = kConvertedRows<scalar_t> ? g.C : xs.w;
  const WindowTaps window(g, xsw);
  const RowBounds bounds = row_bounds(g.PW, g.W, g.OW, g.KW, g.OW <= 28);
  const int64_t bytes = (g.N * g.C * g.D * g.H * g.W + rows * g.OW * g.O) * sizeof(scalar_t);
  const OutputStreaming<scalar_t> streaming(y, ys.w, ys.h, g.O, bytes);
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> offsets(2 * g.KD * g.KH), scratch(2 * g.KD * g.KH);
    Buffer<scalar_t> staged_row(streaming.staged ? g.OW * g.O : 0);
    // half: the input rows converted to acc_t once, not once per tap and pixel
    ConvertedRows<scalar_t, acc_t> converted(g, kConvertedRows<scalar_t>);
    PrefetchRows<scalar_t> ahead(x, xs.w, g.W, g.SW == 1 && g.SH == 1 && g.SD == 1);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / (g.OD * g.OH), od = (r / g.OH) % g.OD, oh = r % g.OH;
      const int64_t nrows = input_rows(g, xs, n, od, oh, offsets.data());
      const OutputStore store = streaming.row_store(r, end, g.OD, g.OH, ys);
      ahead.clear();
      if (r + 1 < end)
        ahead.set(scratch.data(), input_rows_of(g, xs, r + 1, scratch.data()), offsets.data(),
                  nrows);
      scalar_t* const target = y + n * ys.n + od * ys.d + oh * ys.h;
      scalar_t* const yrow = streaming.staged ? staged_row.data() : target;
      const in_t* xr;
      if constexpr (kConvertedRows<scalar_t>) {
        converted.convert(x, xs, g, nrows, offsets.data());
        xr = converted.data();
      } else {
        xr = x;
      }
      auto tile = [&](auto tw, auto nb, int64_t ow, int64_t c0, const ColumnTaps& taps) {
        constexpr int64_t TW = decltype(tw)::value, NB = decltype(nb)::value;
        ahead.prefetch_columns(ow * g.SW - g.PW, ow + TW == g.OW ? g.W : (ow + TW) * g.SW - g.PW,
                               c0, NB * L);
        forward_tile<scalar_t, acc_t, TW, NB>(
            xr + (ow * g.SW - g.PW) * xsw + c0, g.SW * xsw, wt.data() + c0, wt_step,
            bias.data() + c0, yrow + ow * ys.w + c0, ys.w, offsets.data(), nrows, taps, store);
      };
      tile_row(g.OW, first, last, g.O, L, window.all(),
               [&](int64_t ow) { return window.of_column(ow); }, tile, bounds);
      if (streaming.staged) stream_row(yrow, target, g.OW * g.O);
    }
    if (streaming.any()) stream_fence();
  });
}

template <typename scalar_t, bool UNIT>
void forward_width_inner(const scalar_t* x, Strides xs, const scalar_t* w, const scalar_t* b,
                         scalar_t* y, Strides ys, const Geometry& g) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t rows = g.N * g.O * g.OD * g.OH;
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(g.OW);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t oh = r % g.OH, od = (r / g.OH) % g.OD, o = (r / (g.OH * g.OD)) % g.O;
      const int64_t n = r / (g.OH * g.OD * g.O), c = o / g.M;
      std::fill(acc.begin(), acc.end(), b ? static_cast<acc_t>(b[o]) : acc_t(0));
      for (int64_t kd = 0; kd < g.KD; ++kd) {
        const int64_t id = od * g.SD - g.PD + kd * g.DD;
        if (id < 0 || id >= g.D) continue;
        for (int64_t kh = 0; kh < g.KH; ++kh) {
          const int64_t ih = oh * g.SH - g.PH + kh * g.DH;
          if (ih < 0 || ih >= g.H) continue;
          const scalar_t* row = x + n * xs.n + c * xs.c + id * xs.d + ih * xs.h;
          for (int64_t kw = 0; kw < g.KW; ++kw) {
            const acc_t wv = static_cast<acc_t>(w[o * g.taps() + (kd * g.KH + kh) * g.KW + kw]);
            int64_t lo, hi;
            valid_range(g.W, g.OW, g.SW, g.PW, kw * g.DW, lo, hi);
            const int64_t offset = kw * g.DW - g.PW;
            if (UNIT && g.SW == 1) {
              const scalar_t* xp = row + (lo + offset);
              acc_t* ap = acc.data() + lo;
#pragma omp simd
              for (int64_t i = 0; i < hi - lo; ++i) ap[i] += static_cast<acc_t>(xp[i]) * wv;
            } else {
              for (int64_t ow = lo; ow < hi; ++ow)
                acc[ow] += static_cast<acc_t>(row[(ow * g.SW + offset) * xs.w]) * wv;
            }
          }
        }
      }
      scalar_t* yp = y + n * ys.n + o * ys.c + od * ys.d + oh * ys.h;
      for (int64_t ow = 0; ow < g.OW; ++ow) yp[ow * ys.w] = from_acc<scalar_t>(acc[ow]);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// backward, channels innermost: input gradient by column phases, weight gradient in fixed chunks

// The strided input gradient by column phases: input columns p + SW * j (phase p) receive from
// the taps kw with (p + PW - kw * DW) divisible by SW, which read dy column j + base, base =
// (p + PW - kw * DW) / SW; consecutive j read consecutive dy columns, so each phase is a
// unit-stride window sum over dy, for forward_tile with output columns SW apart.
struct ColumnPhase {
  std::vector<int64_t> offset, tap, base;  // per tap: base * dy column stride, kw, base
  int64_t columns, first, last;            // its input columns; those with every tap's column
};

std::vector<ColumnPhase> column_phases(const Geometry& g, int64_t dy_column_stride) {
  std::vector<ColumnPhase> phases(g.SW);
  for (int64_t p = 0; p < g.SW; ++p) {
    ColumnPhase& phase = phases[p];
    phase.columns = p < g.W ? (g.W - p + g.SW - 1) / g.SW : 0;
    phase.first = 0;
    phase.last = phase.columns;
    for (int64_t kw = 0; kw < g.KW; ++kw) {
      const int64_t num = p + g.PW - kw * g.DW;
      if (((num % g.SW) + g.SW) % g.SW != 0) continue;
      const int64_t base = num / g.SW;  // exact
      phase.offset.push_back(base * dy_column_stride);
      phase.tap.push_back(kw);
      phase.base.push_back(base);
      phase.first = std::max(phase.first, -base);
      phase.last = std::min(phase.last, g.OW - base);
    }
    phase.first = std::min(phase.first, phase.columns);
    phase.last = std::max(phase.last, phase.first);
  }
  return phases;
}

// The dy rows input row (n, id, ih) receives from, as pairs (offset, index of its first tap).
int64_t receiving_rows(const Geometry& g, const Strides& dys, int64_t n, int64_t id, int64_t ih,
                       int64_t* offsets) {
  int64_t count = 0;
  for (int64_t kd = 0; kd < g.KD; ++kd) {
    const int64_t od = source(id, g.SD, g.PD, kd * g.DD, g.OD);
    if (od < 0) continue;
    for (int64_t kh = 0; kh < g.KH; ++kh) {
      const int64_t oh = source(ih, g.SH, g.PH, kh * g.DH, g.OH);
      if (oh < 0) continue;
      offsets[2 * count] = n * dys.n + od * dys.d + oh * dys.h;
      offsets[2 * count + 1] = (kd * g.KH + kh) * g.KW;
      ++count;
    }
  }
  return count;
}

// Whether input_grad_pairs_tile takes the layer: stride 2 along the width, KW = 2 * PW + 1 of 3
// or 5 taps (3x3 and 5x5 with symmetric padding), no dilation.
inline bool has_pair_tiles(const Geometry& g) {
  return g.SW == 2 && g.DW == 1 && (g.KW == 3 || g.KW == 5) && g.PW == g.KW / 2;
}

// TW input-gradient columns from i0 = 2 * j0 (even) x NB channel vectors, stride 2, both column
// phases at once: dy column j0 + m feeds dx columns i0 + 2m + k - PW (tap k), so each dy vector
// is loaded once for its KW taps. By phases (forward_tile per phase) it was loaded once per tap,
// and the tiles' 1-2 taps per row left them mostly fixed costs: 17 ns per dy vector against the
// stride-1 gradient's 6 (v14). CLAMP: dy columns outside [0, OW) skipped. dy: acc_t, or
// bfloat16 (see vload_as).
template <typename out_t, typename acc_t, int64_t TW, int64_t NB, int64_t KW, bool CLAMP,
          typename in_t>
inline void input_grad_pairs_tile(const in_t* dy, int64_t dysw, const acc_t* wt, int64_t wt_step,
                                  out_t* dx, int64_t dxsw, const int64_t* offsets, int64_t nrows,
                                  int64_t j0, int64_t OW, OutputStore store) {
  constexpr int64_t L = lanes<acc_t>(), PW = KW / 2, first = -(PW / 2);
  constexpr int64_t last = (TW - 1 + PW) / 2 + 1;
  // every loop over the accumulators unrolled whole: left as loops, GCC zeroed them in memory
  // with a call to memset and stored them through the stack (stride-2 input gradients 1.2x-1.3x
  // faster unrolled, v37 in cpu_direct_notes.md); the other tiles' loops are unrolled likewise
  vec_t<acc_t> acc[TW][NB];
#pragma GCC unroll 16
  for (int64_t t = 0; t < TW; ++t)
#pragma GCC unroll 4
    for (int64_t b = 0; b < NB; ++b) acc[t][b] = vec_t<acc_t>{};
  for (int64_t r = 0; r < nrows; ++r) {
    const in_t* row = dy + offsets[2 * r];
    vec_t<acc_t> w[KW][NB];
    for (int64_t k = 0; k < KW; ++k)
      for (int64_t b = 0; b < NB; ++b)
        w[k][b] = vload(wt + (offsets[2 * r + 1] + k) * wt_step + b * L);
#pragma GCC unroll 16
    for (int64_t m = first; m < last; ++m) {
      if (CLAMP && (j0 + m < 0 || j0 + m >= OW)) continue;
#pragma GCC unroll 4
      for (int64_t b = 0; b < NB; ++b) {
        const vec_t<acc_t> v = vload_as<acc_t>(row + (j0 + m) * dysw + b * L);
#pragma GCC unroll 5
        for (int64_t k = 0; k < KW; ++k) {
          const int64_t t = 2 * m + k - PW;
          if (t >= 0 && t < TW) acc[t][b] += v * w[k][b];
        }
      }
    }
  }
#pragma GCC unroll 16
  for (int64_t t = 0; t < TW; ++t)
#pragma GCC unroll 4
    for (int64_t b = 0; b < NB; ++b)
      store_vector<out_t, acc_t>(dx + t * dxsw + b * L, acc[t][b], store);
}

// Calls input_grad_pairs_tile over dx columns [i0, W) for the NB channel vectors at dy, dx, wt:
// tiles of 16 / NB columns, then halves down to 1 (all but the last start on an even column).
template <typename out_t, typename acc_t, int64_t KW, int64_t NB, int64_t TW = 16 / NB,
          typename in_t>
inline void input_grad_pairs(const in_t* dy, int64_t dysw, const acc_t* wt, int64_t wt_step,
                             out_t* dx, int64_t dxsw, const int64_t* offsets, int64_t nrows,
                             int64_t i0, int64_t W, int64_t OW, OutputStore store) {
  constexpr int64_t PW = KW / 2;
  for (; i0 + TW <= W; i0 += TW) {
    const int64_t j0 = i0 / 2;
    const bool inside = j0 - PW / 2 >= 0 && j0 + (TW - 1 + PW) / 2 < OW;
    if (inside)
      input_grad_pairs_tile<out_t, acc_t, TW, NB, KW, false>(dy, dysw, wt, wt_step, dx + i0 * dxsw,
                                                             dxsw, offsets, nrows, j0, OW, store);
    else
      input_grad_pairs_tile<out_t, acc_t, TW, NB, KW, true>(dy, dysw, wt, wt_step, dx + i0 * dxsw,
                                                            dxsw, offsets, nrows, j0, OW, store);
  }
  if constexpr (TW > 1)
    input_grad_pairs<out_t, acc_t, KW, NB, TW / 2>(dy, dysw, wt, wt_step, dx, dxsw, offsets,
                                                   nrows, i0, W, OW, store);
}

// input_grad_pairs over `channels` (at least one vector's worth). Rows of 48 columns and more in
// groups of NB vectors (4 for 3 taps, 2 for 5: the accumulators and KW x NB weights stay in
// registers), then single vectors: one vector at a time walking the row, channels_last layers of
// 56-112 columns took 1.24x-1.46x longer; narrower rows the other way round (1.05x-1.33x faster
// alone, v15). A tail past the last whole vector as in tile_row: one vector overlapping it.
template <typename out_t, typename acc_t, int64_t KW, typename in_t>
void input_grad_pairs_row(const in_t* dy, int64_t dysw, const acc_t* wt, int64_t wt_step,
                          out_t* dx, int64_t dxsw, const int64_t* offsets, int64_t nrows,
                          int64_t channels, int64_t W, int64_t OW, OutputStore store) {
  constexpr int64_t L = lanes<acc_t>(), NB = KW == 3 ? 4 : 2;
  const int64_t vectors_end = channels / L * L;
  auto single = [&](int64_t c0) {
    input_grad_pairs<out_t, acc_t, KW, 1>(dy + c0, dysw, wt + c0, wt_step, dx + c0, dxsw, offsets,
                                          nrows, 0, W, OW, store);
  };
  int64_t c0 = 0;
  for (; W >= 48 && c0 + NB * L <= vectors_end; c0 += NB * L)
    input_grad_pairs<out_t, acc_t, KW, NB>(dy + c0, dysw, wt + c0, wt_step, dx + c0, dxsw,
                                           offsets, nrows, 0, W, OW, store);
  for (; c0 < vectors_end; c0 += L) single(c0);
  if (vectors_end < channels) single(channels - L);
}

// One input row's gradient, `channels` (at least L) innermost (vectors of L through the tiles, a
// tail as in tile_row): dy's rows at `offsets` (column stride dysw), weights [tap][wt_step],
// `zeros` at least `channels` long; dx's columns dxsw apart. `scratch` holds 2 * KW.
template <typename out_t, typename acc_t, typename in_t>
void input_grad_row(const in_t* dy, int64_t dysw, const acc_t* wt, int64_t wt_step,
                    const acc_t* zeros, const int64_t* offsets, int64_t nrows,
                    const std::vector<ColumnPhase>& phases, const Geometry& g, int64_t channels,
                    out_t* dx, int64_t dxsw, int64_t* scratch, OutputStore store = {}) {
  constexpr int64_t L = lanes<acc_t>();
  const bool pairs = has_pair_tiles(g);
  if (pairs && g.KW == 3)
    input_grad_pairs_row<out_t, acc_t, 3>(dy, dysw, wt, wt_step, dx, dxsw, offsets, nrows,
                                          channels, g.W, g.OW, store);
  else if (pairs)
    input_grad_pairs_row<out_t, acc_t, 5>(dy, dysw, wt, wt_step, dx, dxsw, offsets, nrows,
                                          channels, g.W, g.OW, store);
  for (int64_t p = 0; p < g.SW; ++p) {
    const ColumnPhase& phase = phases[p];
    // at stride 1 without dilation every tap reads consecutive dy columns: a flipped window
    const int64_t count = static_cast<int64_t>(phase.tap.size());
    const bool window = g.SW == 1 && g.DW == 1 && count == g.KW;
    const ColumnTaps interior{phase.offset.data(), phase.tap.data(), count, window ? count : 0,
                              window};
    auto border = [&](int64_t j) {  // the taps whose dy column j + base exists
      int64_t count = 0;
      for (size_t t = 0; t < phase.tap.size(); ++t)
        if (j + phase.base[t] >= 0 && j + phase.base[t] < g.OW) {
          scratch[count] = phase.offset[t];
          scratch[g.KW + count++] = phase.tap[t];
        }
      return ColumnTaps{scratch, scratch + g.KW, count};
    };
    auto tile = [&](auto tw, auto nb, int64_t j, int64_t c0, const ColumnTaps& taps) {
      forward_tile<out_t, acc_t, decltype(tw)::value, decltype(nb)::value>(
          dy + j * dysw + c0, dysw, wt + c0, wt_step, zeros + c0, dx + (p + g.SW * j) * dxsw + c0,
          g.SW * dxsw, offsets, nrows, taps, store);
    };
    if (!pairs)
      tile_row(phase.columns, phase.first, phase.last, channels, L, interior, border, tile);
  }
}

// Input gradient, channels innermost, multiplier 1, any stride: per input row, its dy rows
// through input_grad_row's column phases.
template <typename scalar_t>
void input_grad_channels_inner_phases(const scalar_t* dy, Strides dys, const scalar_t* w,
                                      scalar_t* dx, Strides dxs, const Geometry& g) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t wt_step = tap_row_step<acc_t>(g.O);
  const Buffer<acc_t> wt = taps_outer(w, g.O, g.taps(), wt_step);
  const Buffer<acc_t> zeros(g.O, acc_t(0));
  Geometry rows_geometry = g;  // dy's rows: OW columns of C (= O) channels
  rows_geometry.W = g.OW;
  using in_t = tile_input_t<scalar_t>;
  const int64_t dysw = kConvertedRows<scalar_t> ? g.O : dys.w;
  const std::vector<ColumnPhase> phases = column_phases(g, dysw);
  const int64_t bytes =
      (2 * g.N * g.C * g.D * g.H * g.W + g.N * g.OD * g.OH * g.OW * g.O) * sizeof(scalar_t);
  const OutputStreaming<scalar_t> streaming(dx, dxs.w, dxs.h, g.C, bytes);
  at::parallel_for(0, g.N * g.D * g.H, 1, [&](int64_t begin, int64_t end) {
    Buffer<scalar_t> staged_row(streaming.staged ? g.W * g.C : 0);
    std::vector<int64_t> offsets(2 * g.KD * g.KH), previous(2 * g.KD * g.KH), scratch(2 * g.KW);
    ConvertedRows<scalar_t, acc_t> converted(rows_geometry, kConvertedRows<scalar_t>);
    PrefetchRows<scalar_t> new_rows(dy, dys.w, g.OW, true);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / (g.D * g.H), id = (r / g.H) % g.D, ih = r % g.H;
      const int64_t nrows = receiving_rows(g, dys, n, id, ih, offsets.data());
      const OutputStore store = streaming.row_store(r, end, g.D, g.H, dxs);
      new_rows.clear();
      if (const int64_t r0 = r - 1; r0 >= begin)
        new_rows.set(offsets.data(), nrows, previous.data(),
                     receiving_rows(g, dys, r0 / (g.D * g.H), (r0 / g.H) % g.D, r0 % g.H,
                                    previous.data()));
      new_rows.prefetch_columns(0, g.OW, 0, g.O);
      const in_t* dyr;
      if constexpr (kConvertedRows<scalar_t>) {
        converted.convert(dy, dys, rows_geometry, nrows, offsets.data());
        dyr = converted.data();
      } else {
        dyr = dy;
      }
      scalar_t* const target = dx + n * dxs.n + id * dxs.d + ih * dxs.h;
      input_grad_row(dyr, dysw, wt.data(), wt_step, zeros.data(), offsets.data(), nrows, phases, g,
                     g.C, streaming.staged ? staged_row.data() : target, dxs.w, scratch.data(),
                     store);
      if (streaming.staged) stream_row(staged_row.data(), target, g.W * g.C);
    }
    if (streaming.any()) stream_fence();
  });
}

// weight_grad_tile for a whole window of KW taps on consecutive columns: input column c of a row
// meets the output gradients of columns c - kw, so each input vector is loaded once per row for
// all its taps. Each tap's sum is split into P partial sums (over the columns c with c % P == p),
// as many as the registers hold: one sum per tap made KW chains of TW dependent multiply-adds,
// and this CPU (2 per cycle, 4 cycles each) waited on every link.
template <typename acc_t, int64_t TW, int64_t NB, int64_t KW, bool CLAMP, typename in_t,
          typename dy_t>
[[gnu::always_inline]] inline void weight_grad_tile_window(
    const dy_t* dy, int64_t dysw, const in_t* x, int64_t column_step, acc_t* acc,
    int64_t acc_step, acc_t* bias_acc, const int64_t* row_offsets, int64_t nrows, int64_t lo,
    int64_t hi) {
  constexpr int64_t L = lanes<acc_t>();
  constexpr int64_t P = std::max<int64_t>(1, std::min<int64_t>(4, (30 - TW) / KW));
  for (int64_t j = 0; j < NB; ++j) {
    vec_t<acc_t> d[TW], bias_sum{};
#pragma GCC unroll 16
    for (int64_t i = 0; i < TW; ++i) {
      d[i] = vload_as<acc_t>(dy + i * dysw + j * L);
      bias_sum += d[i];
    }
    vstore(bias_acc + j * L, vload(bias_acc + j * L) + bias_sum);
    for (int64_t r = 0; r < nrows; ++r) {
      const in_t* xc = x + row_offsets[2 * r] + j * L;
      acc_t* arow = acc + row_offsets[2 * r + 1] * acc_step + j * L;
      vec_t<acc_t> sum[P][KW] = {};
#pragma GCC unroll 32
      for (int64_t c = 0; c < TW + KW - 1; ++c, xc += column_step) {
        if (CLAMP && (c < lo || c >= hi)) continue;
        vec_t<acc_t> xv = vload_as<acc_t>(xc);
        // GCC folded this load into each of the column's KW multiply-adds, as in
        // forward_tile_window: kept in a register where one is left (3x3 weight gradients
        // 1.05x-1.2x, 5x5 0.97x-1.25x; with 16 columns of 7 taps the registers are full, v38 in
        // cpu_direct_notes.md)
        if constexpr (P * KW + TW < 30) keep_in_register<acc_t>(xv);
#pragma GCC unroll 8
        for (int64_t k = 0; k < KW; ++k)
          if (c - k >= 0 && c - k < TW) sum[c % P][k] += d[c - k] * xv;
      }
#pragma GCC unroll 8
      for (int64_t k = 0; k < KW; ++k) {
        vec_t<acc_t> total = sum[0][k];
#pragma GCC unroll 4
        for (int64_t p = 1; p < P; ++p) total += sum[p][k];
        vstore(arow + k * acc_step, vload(arow + k * acc_step) + total);
      }
    }
  }
}

// TW output columns x NB channel vectors of the weight and bias gradients: the tile's output
// gradients stay in registers while, per column tap of each input row, the TW input vectors are
// multiplied into them and the tap's sum is added to acc ([tap][O]); dy, x, acc and bias_acc at
// the tile's first channel, x at the first column's base. dy and x: acc_t, or bfloat16 (see
// vload_as); dy also a channel block's pairs (UpperHalves).
template <typename acc_t, int64_t TW, int64_t NB, typename in_t, typename dy_t>
[[gnu::always_inline]] inline void weight_grad_tile(
    const dy_t* dy, int64_t dysw, const in_t* x, int64_t column_step, acc_t* acc,
    int64_t acc_step, acc_t* bias_acc, const int64_t* row_offsets, int64_t nrows,
    const ColumnTaps& taps) {
  if (with_window<TW>(taps, [&](auto kw, auto clamp) __attribute__((always_inline)) {
        weight_grad_tile_window<acc_t, TW, NB, decltype(kw)::value, decltype(clamp)::value>(
            dy, dysw, x, column_step, acc, acc_step, bias_acc, row_offsets, nrows, taps.lo,
            taps.hi);
      }))
    return;
  constexpr int64_t L = lanes<acc_t>();
  vec_t<acc_t> d[TW][NB];
#pragma GCC unroll 4
  for (int64_t j = 0; j < NB; ++j) {
    vec_t<acc_t> sum{};
#pragma GCC unroll 16
    for (int64_t i = 0; i < TW; ++i) {
      d[i][j] = vload_as<acc_t>(dy + i * dysw + j * L);
      sum += d[i][j];
    }
    vstore(bias_acc + j * L, vload(bias_acc + j * L) + sum);
  }
  for (int64_t r = 0; r < nrows; ++r) {
    const in_t* xrow = x + row_offsets[2 * r];
    acc_t* arow = acc + row_offsets[2 * r + 1] * acc_step;
    for (int64_t t = 0; t < taps.count; ++t) {
      const in_t* xp = xrow + taps.offset[t];
#pragma GCC unroll 4
      for (int64_t j = 0; j < NB; ++j) {
        vec_t<acc_t> sum{};
#pragma GCC unroll 16
        for (int64_t i = 0; i < TW; ++i)
          sum += d[i][j] * vload_as<acc_t>(xp + i * column_step + j * L);
        acc_t* ap = arow + taps.tap[t] * acc_step + j * L;
        vstore(ap, vload(ap) + sum);
      }
    }
  }
}

template <typename scalar_t, typename acc_t, typename SumOf>
void store_channel_block(int64_t o0, int64_t o1, int64_t taps, const SumOf& sum_of, scalar_t* dw,
                         scalar_t* db);

// The weight and bias gradients from the chunks' sums (per chunk, `stride` apart: a row of `step`
// >= O values per tap, then the bias's), summed in chunk order: the same bits run to run.
template <typename scalar_t, typename acc_t>
void sum_chunks(const acc_t* partial, int64_t chunks, int64_t stride, int64_t step, int64_t taps,
                int64_t O, scalar_t* dw, scalar_t* db) {
  over_channel_blocks(O, chunks * (taps + 1), [&](int64_t o0, int64_t o1) {
    auto sum_of = [&](int64_t t, acc_t* sum) {
      for (int64_t o = o0; o < o1; ++o) sum[o - o0] = 0;
      for (int64_t chunk = 0; chunk < chunks; ++chunk)
        for (int64_t o = o0; o < o1; ++o) sum[o - o0] += partial[chunk * stride + t * step + o];
    };
    store_channel_block<scalar_t, acc_t>(o0, o1, taps, sum_of, dw, db);
  });
}

// Weight and bias gradients, channels innermost, multiplier 1: one task per fixed chunk of output
// rows; per row, tiles of output columns x channel vectors through weight_grad_tile (border
// columns one at a time, with their valid taps only) into the chunk's [tap][channel] sums; the
// vector overlapping the channel tail (tile_row) into sums of its own, whose tail lanes join the
// chunk's at its end. Chunks are a fixed partition, summed in chunk order: the same bits run to
// run at a given thread count.
template <typename scalar_t>
void weight_grad_channels_inner_tiled(const scalar_t* dy, Strides dys, const scalar_t* x,
                                      Strides xs, scalar_t* dw, scalar_t* db, const Geometry& g) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int64_t L = lanes<acc_t>();
  const int64_t rows = g.N * g.OD * g.OH, taps = g.taps();
  const int64_t tail_c0 = g.O % L ? g.O - L : -1;
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(rows, at::get_num_threads()));
  int64_t first, last;
  interior_columns(g, first, last);
  const int64_t tap_step = tap_row_step<acc_t>(g.O);
  const int64_t stride = (taps + 1) * tap_step;  // per chunk: [tap][channel], then the bias
  Buffer<acc_t> partial(chunks * stride, acc_t(0));
  using in_t = tile_input_t<scalar_t>;
  const int64_t xsw = kConvertedRows<scalar_t> ? g.C : xs.w;
  const WindowTaps window(g, xsw);
  const RowBounds bounds = row_bounds(g.PW, g.W, g.OW, g.KW, true, true);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> offsets(2 * g.KD * g.KH), scratch(2 * g.KD * g.KH);
    ConvertedRows<scalar_t, acc_t> converted(g, kConvertedRows<scalar_t>);
    Buffer<acc_t> dy_converted(kConvertedRows<scalar_t> ? g.OW * g.O : 0);
    PrefetchRows<scalar_t> x_ahead(x, xs.w, g.W, kConvertedRows<scalar_t>);
    PrefetchRows<scalar_t> dy_ahead(dy, dys.w, g.OW, kConvertedRows<scalar_t>);
    // the tail vector's [tap][lane] sums, then its bias's
    Buffer<acc_t> tail_sums(tail_c0 >= 0 ? (taps + 1) * L : 0);
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      acc_t* acc = partial.data() + chunk * stride;
      acc_t* bias_acc = acc + taps * tap_step;
      std::fill(tail_sums.data(), tail_sums.data() + tail_sums.size(), acc_t(0));
      for (int64_t r = chunk * rows / chunks; r < (chunk + 1) * rows / chunks; ++r) {
        const int64_t n = r / (g.OD * g.OH), od = (r / g.OH) % g.OD, oh = r % g.OH;
        const int64_t nrows = input_rows(g, xs, n, od, oh, offsets.data());
        const scalar_t* dyrow = dy + n * dys.n + od * dys.d + oh * dys.h;
        x_ahead.clear();
        dy_ahead.clear();
        if (const int64_t r1 = r + 1; r1 < (chunk + 1) * rows / chunks) {
          x_ahead.set(scratch.data(), input_rows_of(g, xs, r1, scratch.data()), offsets.data(),
                      nrows);
          dy_ahead.add(row_start(r1, g.OD, g.OH, dys));
        }
        const in_t *xr, *dyr;
        int64_t dysw;
        if constexpr (!kConvertedRows<scalar_t>) {
          xr = x;
          dyr = dyrow;
          dysw = dys.w;
        } else {  // half: convert the rows once, not once per tap
          converted.convert(x, xs, g, nrows, offsets.data());
          for (int64_t ow = 0; ow < g.OW; ++ow)
            convert_span(dyrow + ow * dys.w, dy_converted.data() + ow * g.O, g.O);
          xr = converted.data();
          dyr = dy_converted.data();
          dysw = g.O;
        }
        auto tile = [&](auto tw, auto nb, int64_t ow, int64_t c0, const ColumnTaps& column_taps) {
          constexpr int64_t TW = decltype(tw)::value, NB = decltype(nb)::value;
          const bool row_end = ow + TW == g.OW;
          x_ahead.prefetch_columns(ow * g.SW - g.PW, row_end ? g.W : (ow + TW) * g.SW - g.PW, c0,
                                   NB * L);
          dy_ahead.prefetch_columns(ow, row_end ? g.OW : ow + TW, c0, NB * L);
          const bool tail = c0 == tail_c0;
          weight_grad_tile<acc_t, TW, NB>(
              dyr + ow * dysw + c0, dysw, xr + (ow * g.SW - g.PW) * xsw + c0, g.SW * xsw,
              tail ? tail_sums.data() : acc + c0, tail ? L : tap_step,
              tail ? tail_sums.data() + taps * L : bias_acc + c0, offsets.data(), nrows,
              column_taps);
        };
        tile_row(g.OW, first, last, g.O, L, window.all(),
                 [&](int64_t ow) { return window.of_column(ow); }, tile, bounds);
      }
      for (int64_t t = 0; tail_c0 >= 0 && t <= taps; ++t)  // the bias's sums follow the taps'
        for (int64_t o = g.O / L * L; o < g.O; ++o)
          acc[t * tap_step + o] += tail_sums[t * L + o - tail_c0];
    }
  });
  sum_chunks(partial.data(), chunks, stride, tap_step, taps, g.O, dw, db);
}

// ---------------------------------------------------------------------------------------------
// backward, width innermost: one task per input channel reads its x and dy planes once for
// the input gradient and the weight and bias gradients together

// Channel c's weight- and bias-gradient sums (acc_t, per multiplier and tap) into dw and db.
template <typename scalar_t, typename acc_t>
void store_channel_sums(const acc_t* wsum, const acc_t* bsum, int64_t c, scalar_t* dw,
                        scalar_t* db, const Geometry& g) {
  for (int64_t m = 0; m < g.M; ++m) {
    const int64_t o = c * g.M + m;
    if (dw)
      for (int64_t t = 0; t < g.taps(); ++t)
        dw[o * g.taps() + t] = static_cast<scalar_t>(wsum[m * g.taps() + t]);
    if (db) db[o] = static_cast<scalar_t>(bsum[m]);
  }
}

template <typename scalar_t, bool UNIT>
void backward_width_inner(const scalar_t* dy, Strides dys, const scalar_t* x, Strides xs,
                          const scalar_t* w, scalar_t* dx, Strides dxs, scalar_t* dw, scalar_t* db,
                          const Geometry& g) {
  using acc_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, g.C, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> row(g.W);
    std::vector<acc_t> wsum(g.M * g.taps()), bsum(g.M);
    for (int64_t c = begin; c < end; ++c) {
      std::fill(wsum.begin(), wsum.end(), acc_t(0));
      std::fill(bsum.begin(), bsum.end(), acc_t(0));
      for (int64_t n = 0; n < g.N; ++n) {
        if (dx) {
          for (int64_t id = 0; id < g.D; ++id) {
            for (int64_t ih = 0; ih < g.H; ++ih) {
              std::fill(row.begin(), row.end(), acc_t(0));
              for (int64_t m = 0; m < g.M; ++m) {
                const int64_t o = c * g.M + m;
                for (int64_t kd = 0; kd < g.KD; ++kd) {
                  const int64_t od = source(id, g.SD, g.PD, kd * g.DD, g.OD);
                  if (od < 0) continue;
                  for (int64_t kh = 0; kh < g.KH; ++kh) {
                    const int64_t oh = source(ih, g.SH, g.PH, kh * g.DH, g.OH);
                    if (oh < 0) continue;
                    const scalar_t* dyr = dy + n * dys.n + o * dys.c + od * dys.d + oh * dys.h;
                    for (int64_t kw = 0; kw < g.KW; ++kw) {
                      const acc_t wv =
                          static_cast<acc_t>(w[o * g.taps() + (kd * g.KH + kh) * g.KW + kw]);
                      int64_t lo, hi;
                      valid_range(g.W, g.OW, g.SW, g.PW, kw * g.DW, lo, hi);
                      const int64_t offset = kw * g.DW - g.PW;
                      if (UNIT && g.SW == 1) {
                        acc_t* rp = row.data() + (lo + offset);
                        const scalar_t* dp = dyr + lo;
#pragma omp simd
                        for (int64_t i = 0; i < hi - lo; ++i) rp[i] += static_cast<acc_t>(dp[i]) * wv;
                      } else {
                        for (int64_t ow = lo; ow < hi; ++ow)
                          row[ow * g.SW + offset] += static_cast<acc_t>(dyr[ow * dys.w]) * wv;
                      }
                    }
                  }
                }
              }
              scalar_t* dxr = dx + n * dxs.n + c * dxs.c + id * dxs.d + ih * dxs.h;
              for (int64_t iw = 0; iw < g.W; ++iw) dxr[iw * dxs.w] = from_acc<scalar_t>(row[iw]);
            }
          }
        }
        if (dw || db) {
          for (int64_t m = 0; m < g.M; ++m) {
            const int64_t o = c * g.M + m;
            for (int64_t od = 0; od < g.OD; ++od) {
              for (int64_t oh = 0; oh < g.OH; ++oh) {
                const scalar_t* dyr = dy + n * dys.n + o * dys.c + od * dys.d + oh * dys.h;
                if (db) {
                  acc_t s = 0;
                  for (int64_t ow = 0; ow < g.OW; ++ow) s += static_cast<acc_t>(dyr[ow * dys.w]);
                  bsum[m] += s;
                }
                if (!dw) continue;
                for (int64_t kd = 0; kd < g.KD; ++kd) {
                  const int64_t id = od * g.SD - g.PD + kd * g.DD;
                  if (id < 0 || id >= g.D) continue;
                  for (int64_t kh = 0; kh < g.KH; ++kh) {
                    const int64_t ih = oh * g.SH - g.PH + kh * g.DH;
                    if (ih < 0 || ih >= g.H) continue;
                    const scalar_t* xr = x + n * xs.n + c * xs.c + id * xs.d + ih * xs.h;
                    for (int64_t kw = 0; kw < g.KW; ++kw) {
                      int64_t lo, hi;
                      valid_range(g.W, g.OW, g.SW, g.PW, kw * g.DW, lo, hi);
                      const int64_t offset = kw * g.DW - g.PW;
                      acc_t s = 0;
                      if (UNIT && g.SW == 1) {
                        const scalar_t* xp = xr + (lo + offset);
                        const scalar_t* dp = dyr + lo;
#pragma omp simd reduction(+ : s)
                        for (int64_t i = 0; i < hi - lo; ++i)
                          s += static_cast<acc_t>(dp[i]) * static_cast<acc_t>(xp[i]);
                      } else {
                        for (int64_t ow = lo; ow < hi; ++ow)
                          s += static_cast<acc_t>(dyr[ow * dys.w]) *
                               static_cast<acc_t>(xr[(ow * g.SW + offset) * xs.w]);
                      }
                      wsum[m * g.taps() + (kd * g.KH + kh) * g.KW + kw] += s;
                    }
                  }
                }
              }
            }
          }
        }
      }
      store_channel_sums(wsum.data(), bsum.data(), c, dw, db, g);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// width innermost, stride 1: whole planes. One (sample, channel) volume is copied once, as acc_t,
// into a zero-padded buffer in cache; then each tap is one long loop over the flattened buffer
// (the positions between rows are computed and dropped), instead of a short loop per row and
// tap. The input gradient is the same sum over dy, padded by (K - 1) * D - P, with the kernel
// flipped; the weight gradient is, per tap, one dot product of dy (placed where the forward's
// outputs sit in the padded layout, zeros between rows) with the padded x shifted by the tap,
// or row by row where x holds an inf or NaN.

// A zero-padded copy of a D x H x W volume: the buffer's extents and where the data starts.
struct Padded {
  int64_t d, h, w, lo_d, lo_h, lo_w;
  int64_t size() const { return d * h * w; }
  int64_t at(int64_t i, int64_t j, int64_t k) const { return (i * h + j) * w + k; }
};

// The layout in which output (o_d, o_h, o_w) of a stride-1 window sum over a D x H x W volume
// padded by (pd, ph, pw) before it sits at at(o_d, o_h, o_w), and tap (kd, kh, kw) reads
// at(o_d + kd * DD, ...): the buffer holds the data, the padding, and every tap of every output.
Padded padded_layout(int64_t D, int64_t H, int64_t W, int64_t OD, int64_t OH, int64_t OW,
                     int64_t pd, int64_t ph, int64_t pw, const Geometry& g) {
  return {std::max(pd + D, OD + (g.KD - 1) * g.DD), std::max(ph + H, OH + (g.KH - 1) * g.DH),
          std::max(pw + W, OW + (g.KW - 1) * g.DW), pd, ph, pw};
}

// Copy a D x H x W volume (element strides sd, sh, sw) into `buf` laid out as `p`, zeros around.
template <typename scalar_t, typename acc_t>
void fill_padded(const scalar_t* v, int64_t sd, int64_t sh, int64_t sw, int64_t D, int64_t H,
                 int64_t W, const Padded& p, acc_t* buf) {
  std::fill(buf, buf + p.size(), acc_t(0));
  for (int64_t i = 0; i < D; ++i)
    for (int64_t j = 0; j < H; ++j) {
      const scalar_t* row = v + i * sd + j * sh;
      acc_t* out = buf + p.at(i + p.lo_d, j + p.lo_h, p.lo_w);
      if (sw == 1) {
        convert_span(row, out, W);
      } else {
        for (int64_t k = 0; k < W; ++k) out[k] = static_cast<acc_t>(row[k * sw]);
      }
    }
}

// acc[i] (+)= sum over taps t of src[i + offsets[t]] * wt[t], for i in [0, span), in register
// tiles of four vectors that take every tap before they are stored.
template <typename acc_t>
void shifted_sum(const acc_t* src, const int64_t* offsets, const acc_t* wt, int64_t taps,
                 int64_t span, bool accumulate, acc_t* acc) {
  constexpr int64_t L = 64 / sizeof(acc_t), TILE = 4 * L;
  int64_t i0 = 0;
  for (; i0 + TILE <= span; i0 += TILE) {
    vec_t<acc_t> a0{}, a1{}, a2{}, a3{};
    if (accumulate) {
      a0 = vload(acc + i0);
      a1 = vload(acc + i0 + L);
      a2 = vload(acc + i0 + 2 * L);
      a3 = vload(acc + i0 + 3 * L);
    }
    for (int64_t t = 0; t < taps; ++t) {
      const acc_t* sp = src + offsets[t] + i0;
      const vec_t<acc_t> wv = vec_t<acc_t>{} + wt[t];
      a0 += vload(sp) * wv;
      a1 += vload(sp + L) * wv;
      a2 += vload(sp + 2 * L) * wv;
      a3 += vload(sp + 3 * L) * wv;
    }
    vstore(acc + i0, a0);
    vstore(acc + i0 + L, a1);
    vstore(acc + i0 + 2 * L, a2);
    vstore(acc + i0 + 3 * L, a3);
  }
  // what is left: single vectors, then single values
  for (; i0 + L <= span; i0 += L) {
    vec_t<acc_t> a = accumulate ? vload(acc + i0) : vec_t<acc_t>{};
    for (int64_t t = 0; t < taps; ++t) a += vload(src + offsets[t] + i0) * wt[t];
    vstore(acc + i0, a);
  }
  for (; i0 < span; ++i0) {
    acc_t a = accumulate ? acc[i0] : acc_t(0);
    for (int64_t t = 0; t < taps; ++t) a += src[offsets[t] + i0] * wt[t];
    acc[i0] = a;
  }
}

// sum over i in [0, span) of a[i] * b[i], in a fixed order (vector accumulators, then the rest),
// so it does not depend on thread timing.
template <typename acc_t>
acc_t dot(const acc_t* a, const acc_t* b, int64_t span) {
  constexpr int64_t L = 64 / sizeof(acc_t), TILE = 4 * L;
  vec_t<acc_t> s0{}, s1{}, s2{}, s3{};
  int64_t i = 0;
  for (; i + TILE <= span; i += TILE) {
    s0 += vload(a + i) * vload(b + i);
    s1 += vload(a + i + L) * vload(b + i + L);
    s2 += vload(a + i + 2 * L) * vload(b + i + 2 * L);
    s3 += vload(a + i + 3 * L) * vload(b + i + 3 * L);
  }
  for (; i + L <= span; i += L) s0 += vload(a + i) * vload(b + i);
  const vec_t<acc_t> sum = (s0 + s1) + (s2 + s3);
  acc_t total = 0;
  for (int64_t j = 0; j < L; ++j) total += sum[j];
  for (; i < span; ++i) total += a[i] * b[i];
  return total;
}

// Whether every value is finite: v - v is 0 for a finite v and NaN otherwise.
template <typename acc_t>
bool all_finite(const acc_t* values, int64_t count) {
  constexpr int64_t L = 64 / sizeof(acc_t);
  vec_t<acc_t> probe{};
  int64_t i = 0;
  for (; i + L <= count; i += L) {
    const vec_t<acc_t> v = vload(values + i);
    probe += v - v;
  }
  acc_t total = 0;
  for (int64_t j = 0; j < L; ++j) total += probe[j];
  for (; i < count; ++i) total += values[i] - values[i];
  return total == 0;
}

// Offsets of every tap in layout p, optionally flipped (the input gradient's kernel).
std::vector<int64_t> tap_offsets(const Padded& p, const Geometry& g, bool flipped) {
  std::vector<int64_t> offsets;
  for (int64_t kd = 0; kd < g.KD; ++kd)
    for (int64_t kh = 0; kh < g.KH; ++kh)
      for (int64_t kw = 0; kw < g.KW; ++kw) {
        const int64_t a = flipped ? g.KD - 1 - kd : kd, b = flipped ? g.KH - 1 - kh : kh,
                      c = flipped ? g.KW - 1 - kw : kw;
        offsets.push_back(p.at(a * g.DD, b * g.DH, c * g.DW));
      }
  return offsets;
}

// Store the D x H x W positions of `acc` (laid out as p, data at its origin) into out.
template <typename scalar_t, typename acc_t>
void store_rows(const acc_t* acc, const Padded& p, int64_t D, int64_t H, int64_t W, scalar_t* out,
                int64_t sd, int64_t sh, int64_t sw) {
  for (int64_t i = 0; i < D; ++i)
    for (int64_t j = 0; j < H; ++j) {
      const acc_t* a = acc + p.at(i, j, 0);
      scalar_t* row = out + i * sd + j * sh;
      if (sw == 1) {
#pragma omp simd
        for (int64_t k = 0; k < W; ++k) row[k] = from_acc<scalar_t>(a[k]);
      } else {
        for (int64_t k = 0; k < W; ++k) row[k * sw] = from_acc<scalar_t>(a[k]);
      }
    }
}

bool planes_apply(const Geometry& g) { return g.SD == 1 && g.SH == 1 && g.SW == 1; }

// At stride 1, dx[i] = sum_k dy[i + P - k * D] * w[k]: a stride-1 forward over dy with the
// kernel flipped and the padding (K - 1) * D - P, which yields exactly the input's size.
Geometry input_grad_as_forward(const Geometry& g) {
  Geometry t = g;
  t.D = g.OD; t.H = g.OH; t.W = g.OW;
  t.OD = g.D; t.OH = g.H; t.OW = g.W;
  t.PD = (g.KD - 1) * g.DD - g.PD;
  t.PH = (g.KH - 1) * g.DH - g.PH;
  t.PW = (g.KW - 1) * g.DW - g.PW;
  return t;
}

// ... for the orders that need that padding not negative (it is a buffer's margin there).
bool input_grad_is_padded_forward(const Geometry& g) {
  return planes_apply(g) && g.PD <= (g.KD - 1) * g.DD && g.PH <= (g.KH - 1) * g.DH &&
         g.PW <= (g.KW - 1) * g.DW;
}

// Planes of one channel from consecutive samples laid end to end, as many as fit in about 64 KB
// of acc_t (at least one): small planes (7x7, 14x14) then share one long loop per tap instead of
// paying a loop's overhead each.
template <typename acc_t>
int64_t planes_per_batch(int64_t plane_size, int64_t samples) {
  return std::max<int64_t>(1, std::min<int64_t>(samples, (64 << 10) / sizeof(acc_t) / plane_size));
}

template <typename scalar_t>
void forward_planes(const scalar_t* x, Strides xs, const scalar_t* w, const scalar_t* b,
                    scalar_t* y, Strides ys, const Geometry& g) {
  using acc_t = at::opmath_type<scalar_t>;
  const Padded p = padded_layout(g.D, g.H, g.W, g.OD, g.OH, g.OW, g.PD, g.PH, g.PW, g);
  const int64_t span = p.at(g.OD - 1, g.OH - 1, g.OW - 1) + 1;
  const std::vector<int64_t> offsets = tap_offsets(p, g, false);
  const int64_t per = planes_per_batch<acc_t>(p.size(), g.N), batches = (g.N + per - 1) / per;
  at::parallel_for(0, g.C * batches, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buf(per * p.size()), acc((per - 1) * p.size() + span), wt(g.taps());
    for (int64_t r = begin; r < end; ++r) {
      const int64_t c = r / batches, n0 = (r % batches) * per, count = std::min(per, g.N - n0);
      for (int64_t k = 0; k < count; ++k)
        fill_padded(x + (n0 + k) * xs.n + c * xs.c, xs.d, xs.h, xs.w, g.D, g.H, g.W, p,
                    buf.data() + k * p.size());
      const int64_t total = (count - 1) * p.size() + span;
      for (int64_t m = 0; m < g.M; ++m) {
        const int64_t o = c * g.M + m;
        for (int64_t t = 0; t < g.taps(); ++t) wt[t] = static_cast<acc_t>(w[o * g.taps() + t]);
        shifted_sum(buf.data(), offsets.data(), wt.data(), g.taps(), total, false, acc.data());
        if (b) {
          const acc_t bias = static_cast<acc_t>(b[o]);
#pragma omp simd
          for (int64_t i = 0; i < total; ++i) acc[i] += bias;
        }
        for (int64_t k = 0; k < count; ++k)
          store_rows(acc.data() + k * p.size(), p, g.OD, g.OH, g.OW,
                     y + (n0 + k) * ys.n + o * ys.c, ys.d, ys.h, ys.w);
      }
    }
  });
}

// One task per input channel, samples in order (batched as in the forward): the weight and bias
// gradients reduce in a fixed order (deterministic), and x and dy are read once for all three.
template <typename scalar_t>
void backward_planes(const scalar_t* dy, Strides dys, const scalar_t* x, Strides xs,
                     const scalar_t* w, scalar_t* dx, Strides dxs, scalar_t* dw, scalar_t* db,
                     const Geometry& g) {
  using acc_t = at::opmath_type<scalar_t>;
  const Padded px = padded_layout(g.D, g.H, g.W, g.OD, g.OH, g.OW, g.PD, g.PH, g.PW, g);
  const int64_t span = px.at(g.OD - 1, g.OH - 1, g.OW - 1) + 1;
  const std::vector<int64_t> x_offsets = tap_offsets(px, g, false);
  // dy padded for the input gradient: a stride-1 window sum whose outputs are x's positions
  const Geometry t = input_grad_as_forward(g);
  const Padded pd = padded_layout(t.D, t.H, t.W, t.OD, t.OH, t.OW, t.PD, t.PH, t.PW, g);
  const int64_t dx_span = pd.at(g.D - 1, g.H - 1, g.W - 1) + 1;
  const std::vector<int64_t> dy_offsets = tap_offsets(pd, g, true);
  // dy where the forward's outputs sit in x's padded layout
  const Padded py{px.d, px.h, px.w, 0, 0, 0};
  const int64_t per = planes_per_batch<acc_t>(std::max(px.size(), pd.size()), g.N);
  at::parallel_for(0, g.C, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> xbuf(dw ? per * px.size() : 0), dyq(dw ? per * px.size() : 0);
    std::vector<acc_t> dybuf(dx ? per * pd.size() : 0);
    std::vector<acc_t> acc(dx ? (per - 1) * pd.size() + dx_span : 0), wt(g.taps());
    std::vector<acc_t> wsum(g.M * g.taps()), bsum(g.M);
    for (int64_t c = begin; c < end; ++c) {
      std::fill(wsum.begin(), wsum.end(), acc_t(0));
      std::fill(bsum.begin(), bsum.end(), acc_t(0));
      for (int64_t n0 = 0; n0 < g.N; n0 += per) {
        const int64_t count = std::min(per, g.N - n0);
        bool x_finite = true;
        if (dw) {
          for (int64_t k = 0; k < count; ++k)
            fill_padded(x + (n0 + k) * xs.n + c * xs.c, xs.d, xs.h, xs.w, g.D, g.H, g.W, px,
                        xbuf.data() + k * px.size());
          x_finite = all_finite(xbuf.data(), count * px.size());
        }
        for (int64_t m = 0; m < g.M; ++m) {
          const int64_t o = c * g.M + m;
          const scalar_t* dyo = dy + n0 * dys.n + o * dys.c;
          if (dx) {
            for (int64_t t = 0; t < g.taps(); ++t) wt[t] = static_cast<acc_t>(w[o * g.taps() + t]);
            for (int64_t k = 0; k < count; ++k)
              fill_padded(dyo + k * dys.n, dys.d, dys.h, dys.w, g.OD, g.OH, g.OW, pd,
                          dybuf.data() + k * pd.size());
            shifted_sum(dybuf.data(), dy_offsets.data(), wt.data(), g.taps(),
                        (count - 1) * pd.size() + dx_span, m > 0, acc.data());
          }
          if (dw) {
            for (int64_t k = 0; k < count; ++k)
              fill_padded(dyo + k * dys.n, dys.d, dys.h, dys.w, g.OD, g.OH, g.OW, py,
                          dyq.data() + k * px.size());
            for (int64_t t = 0; t < g.taps(); ++t) {
              const acc_t* xt = xbuf.data() + x_offsets[t];
              acc_t s = 0;
              if (x_finite) {  // dy is zero between rows and planes: one dot over them all
                s = dot(dyq.data(), xt, (count - 1) * px.size() + span);
              } else {  // row by row: a tap must not see an inf it never reads (0 * inf is NaN)
                for (int64_t k = 0; k < count; ++k)
                  for (int64_t od = 0; od < g.OD; ++od)
                    for (int64_t oh = 0; oh < g.OH; ++oh) {
                      const int64_t row = k * px.size() + px.at(od, oh, 0);
                      s += dot(dyq.data() + row, xt + row, g.OW);
                    }
              }
              wsum[m * g.taps() + t] += s;
            }
          }
          if (db) {
            acc_t s = 0;
            for (int64_t k = 0; k < count; ++k)
              for (int64_t od = 0; od < g.OD; ++od)
                for (int64_t oh = 0; oh < g.OH; ++oh) {
                  const scalar_t* row = dyo + k * dys.n + od * dys.d + oh * dys.h;
                  for (int64_t ow = 0; ow < g.OW; ++ow) s += static_cast<acc_t>(row[ow * dys.w]);
                }
            bsum[m] += s;
          }
        }
        if (dx)
          for (int64_t k = 0; k < count; ++k)
            store_rows(acc.data() + k * pd.size(), pd, g.D, g.H, g.W,
                       dx + (n0 + k) * dxs.n + c * dxs.c, dxs.d, dxs.h, dxs.w);
      }
      store_channel_sums(wsum.data(), bsum.data(), c, dw, db, g);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// width innermost, strided or small planes: channel blocks turned channels-innermost in cache.
// One task takes L channels of one sample (a vector's lanes), copies their volumes into a
// zero-padded buffer laid out [d][h][w][L], computes there with the channels-inner tiles, and
// copies the result back to planes. The backward does the same with x and dy for all three
// gradients at once.

// The padded volume of a window sum with strides: the data at (PD, PH, PW), every tap of every
// output inside.
Padded strided_layout(const Geometry& g) {
  return {std::max(g.PD + g.D, (g.OD - 1) * g.SD + (g.KD - 1) * g.DD + 1),
          std::max(g.PH + g.H, (g.OH - 1) * g.SH + (g.KH - 1) * g.DH + 1),
          std::max(g.PW + g.W, (g.OW - 1) * g.SW + (g.KW - 1) * g.DW + 1), g.PD, g.PH, g.PW};
}

#if defined(__GNUC__) && !defined(__clang__) && defined(__AVX512F__) && defined(__AVX512BW__) && \
    defined(__AVX512VL__)
#define DIAGONALWISE_TRANSPOSE 1
// 16 vectors of 16 32-bit lanes transposed in registers: for b = 8, 4, 2, 1, rows i and i + b
// ((i & b) == 0) exchange their elements q with (q & b) set against the partner's q - b
// (two-input shuffles, one instruction each with AVX-512). Stage s (b = 8 >> s) exchanges bit b
// of the row index with bit b of the lane index; starting at a later stage leaves the higher bits
// where they are (the first `rows` rows only).
typedef int32_t shuffle_mask_t __attribute__((vector_size(64)));
// masks[s] for b = 8 >> s: {(q & b) ? 16 + q - b : q} and {(q & b) ? 16 + q : q + b}
constexpr shuffle_mask_t kTransposeMasks[4][2] = {
      {{0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23},
       {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31}},
      {{0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27},
       {4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31}},
      {{0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29},
       {2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31}},
      {{0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30},
       {1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31}},
};

template <int64_t FirstStage, int64_t Rows, typename V>
inline void transpose_stages(V* r) {
#pragma GCC unroll 4
  for (int64_t stage = FirstStage; stage < 4; ++stage) {
    const int64_t b = 8 >> stage;
#pragma GCC unroll 16
    for (int64_t i = 0; i < Rows; ++i) {
      if (i & b) continue;
      const V a = r[i], c = r[i + b];
      r[i] = __builtin_shuffle(a, c, kTransposeMasks[stage][0]);
      r[i + b] = __builtin_shuffle(a, c, kTransposeMasks[stage][1]);
    }
  }
}

// `count` (<= 16) consecutive floats, the other lanes 0. Fewer than 16 are read with a masked
// load, which reads nothing past them.
inline vec_t<float> load_floats(const float* p, int64_t count) {
  return count == 16 ? vload(p)
                     : vec_t<float>(_mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << count) - 1), p));
}

// The first `count` (<= 16) lanes stored, with a masked store when fewer than 16.
inline void store_floats(float* p, vec_t<float> v, int64_t count) {
  if (count == 16)
    vstore(p, v);
  else
    _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << count) - 1), __m512(v));
}

// 16 bfloat16 values as 32 bytes (fewer than 16: a masked load, zeros past `count`).
inline __m256i load_bfloat16s(const c10::BFloat16* p, int64_t count) {
  return count == 16 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))
                     : _mm256_maskz_loadu_epi16(static_cast<__mmask16>((1u << count) - 1), p);
}

inline void store_bfloat16s(c10::BFloat16* p, __m256i v, int64_t count) {
  if (count == 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v);
  else
    _mm256_mask_storeu_epi16(p, static_cast<__mmask16>((1u << count) - 1), v);
}

// `rows` (<= 16) rows of `width` (<= 16) values, `stride` apart, as 16 float vectors, one per
// column: lane c of columns[q] is row c's value q (zero past `width` and `rows`).
inline void load_columns(const float* p, int64_t stride, int64_t rows, int64_t width,
                         vec_t<float>* columns) {
#pragma GCC unroll 16
  for (int64_t c = 0; c < 16; ++c)
    columns[c] = c < rows ? load_floats(p + c * stride, width) : vec_t<float>{};
  transpose_stages<0, 16>(columns);
}

// bfloat16: transposed as pairs of neighbouring columns (32-bit lanes), rows c and c + 8 in one
// register: three shuffle stages for 8 registers instead of four for 16 (load_column_pairs: lane c
// of pairs[k] holds row c's columns 2k, lower half, and 2k + 1), then each pair's even column
// shifted into a float's top half and its odd column, already there, masked. 2.2x faster than
// converting first and transposing floats (v14 in cpu_direct_notes.md).
inline void load_column_pairs(const c10::BFloat16* p, int64_t stride, int64_t rows, int64_t width,
                              bits_t* pairs) {
  const __m256i none = _mm256_setzero_si256();
  for (int64_t c = 0; c < 8; ++c)
    pairs[c] = bits_t(_mm512_inserti64x4(
        _mm512_castsi256_si512(c < rows ? load_bfloat16s(p + c * stride, width) : none),
        c + 8 < rows ? load_bfloat16s(p + (c + 8) * stride, width) : none, 1));
  transpose_stages<1, 8>(pairs);
}

inline void load_columns(const c10::BFloat16* p, int64_t stride, int64_t rows, int64_t width,
                         vec_t<float>* columns) {
  bits_t pairs[8];
  load_column_pairs(p, stride, rows, width, pairs);
  for (int64_t k = 0; k < 8; ++k) {
    columns[2 * k] = vec_t<float>(pairs[k] << 16);
    columns[2 * k + 1] = vec_t<float>(pairs[k] & 0xFFFF0000u);
  }
}

// The inverse of load_columns: 16 column vectors back to the first `width` values of the first
// `rows` rows.
inline void store_columns(vec_t<float>* columns, float* p, int64_t stride, int64_t rows,
                          int64_t width) {
  transpose_stages<0, 16>(columns);
#pragma GCC unroll 16
  for (int64_t c = 0; c < 16; ++c)  // whole loops keep the columns in registers
    if (c < rows) store_floats(p + c * stride, columns[c], width);
}

#endif

// taps_outer's channels [o0, o1) (at most 16) of float32 or bfloat16 weights, 16 taps at a time
// through load_columns, where the transposes are built (returns whether it did them): one value
// at a time, turning a 768-channel 7x7 layer's weights over took a third of its 4x4 forward (v41).
template <typename scalar_t, typename acc_t>
bool transposed_taps([[maybe_unused]] const scalar_t* w, [[maybe_unused]] int64_t o0,
                     [[maybe_unused]] int64_t o1, [[maybe_unused]] int64_t taps,
                     [[maybe_unused]] int64_t step, [[maybe_unused]] bool flipped,
                     [[maybe_unused]] acc_t* wt) {
#ifdef DIAGONALWISE_TRANSPOSE
  if constexpr (std::is_same_v<acc_t, float> && (std::is_same_v<scalar_t, float> ||
                                                 std::is_same_v<scalar_t, c10::BFloat16>)) {
    for (int64_t t0 = 0; t0 < taps; t0 += 16) {
      const int64_t width = std::min<int64_t>(16, taps - t0);
      vec_t<float> columns[16];
      load_columns(w + o0 * taps + t0, taps, o1 - o0, width, columns);
      for (int64_t q = 0; q < width; ++q)
        store_floats(wt + (flipped ? taps - 1 - t0 - q : t0 + q) * step + o0, columns[q], o1 - o0);
    }
    return true;
  }
#endif
  return false;
}

// The weight and bias gradients of channels [o0, o1) (at most kChannelBlock) from their sums:
// sum_of(t, sum) writes tap t's sums (t == taps: the bias's) of the channels to sum[0, o1 - o0).
// The taps' sums arrive per tap over the channels and go to dw's rows of taps per channel: with
// AVX-512 transposed 16 taps at a time in registers, then copied as one span (o0 .. o1 are
// consecutive rows of dw). Stored element by element, the compiler's scatters of the float32
// 4x768x4x4 7x7 weight gradient took more time than its products (v41).
template <typename scalar_t, typename acc_t, typename SumOf>
void store_channel_block(int64_t o0, int64_t o1, int64_t taps, const SumOf& sum_of, scalar_t* dw,
                         scalar_t* db) {
  constexpr int64_t B = kChannelBlock;
  const int64_t count = o1 - o0;
  alignas(64) acc_t sum[B] = {};
  if (dw) {
    std::vector<acc_t> rows(count * taps);  // [channel][tap]
    for (int64_t t0 = 0; t0 < taps; t0 += B) {
      const int64_t width = std::min(B, taps - t0);
#ifdef DIAGONALWISE_TRANSPOSE
      if constexpr (std::is_same_v<acc_t, float>) {
        vec_t<float> columns[B];
        for (int64_t q = 0; q < B; ++q) {
          if (q < width) sum_of(t0 + q, sum);
          columns[q] = q < width ? vload(sum) : vec_t<float>{};
        }
        store_columns(columns, rows.data() + t0, taps, count, width);
        continue;
      }
#endif
      for (int64_t q = 0; q < width; ++q) {
        sum_of(t0 + q, sum);
        for (int64_t c = 0; c < count; ++c) rows[c * taps + t0 + q] = sum[c];
      }
    }
    for (int64_t i = 0; i < count * taps; ++i) dw[o0 * taps + i] = static_cast<scalar_t>(rows[i]);
  }
  if (db) {
    sum_of(taps, sum);
    for (int64_t c = 0; c < count; ++c) db[o0 + c] = static_cast<scalar_t>(sum[c]);
  }
}

#ifdef DIAGONALWISE_TRANSPOSE
// bfloat16: rounded to nearest even (NaN kept a quiet NaN) as from_acc does, for every normal
// number. With AVX512_BF16, two columns at a time by its conversion instruction (a float denormal
// becomes a signed zero, as in oneDNN's bfloat16 convolutions, which use it), interleaved into
// pairs and transposed as load_columns does: 2.6x faster than transposing floats (v14); without
// it, the floats transposed and each row rounded on its raw bits.
inline void store_columns(vec_t<float>* columns, c10::BFloat16* p, int64_t stride, int64_t rows,
                          int64_t width) {
#ifdef __AVX512BF16__
  typedef int16_t word_mask_t __attribute__((vector_size(64)));
  constexpr word_mask_t kInterleave = {0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,  21, 6,  22, 7,  23,
                                       8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  bits_t pairs[8];
  for (int64_t k = 0; k < 8; ++k) {
    const word_mask_t both = word_mask_t(
        _mm512_cvtne2ps_pbh(__m512(columns[2 * k + 1]), __m512(columns[2 * k])));
    pairs[k] = bits_t(__builtin_shuffle(both, kInterleave));
  }
  transpose_stages<1, 8>(pairs);
#pragma GCC unroll 8
  for (int64_t c = 0; c < 8; ++c) {
    if (c < rows)
      store_bfloat16s(p + c * stride, _mm512_castsi512_si256(__m512i(pairs[c])), width);
    if (c + 8 < rows)
      store_bfloat16s(p + (c + 8) * stride, _mm512_extracti64x4_epi64(__m512i(pairs[c]), 1), width);
  }
#else
  transpose_stages<0, 16>(columns);
#pragma GCC unroll 16
  for (int64_t c = 0; c < 16; ++c) {
    if (c >= rows) continue;
    const half_bits_t narrow = bfloat16_bits(columns[c]);
    store_bfloat16s(p + c * stride, __m256i(narrow), width);
  }
#endif
}
#endif

// The types load_columns and store_columns serve: float lanes holding float or bfloat16 values
// (they take blocks of up to 16 channels with unit-stride rows). This and the volumes below are
// plain C++: the channel blocks use them on every CPU (without the transposes, value by value).
template <typename scalar_t, typename acc_t>
constexpr bool kTransposable = std::is_same_v<acc_t, float> && !std::is_same_v<scalar_t, c10::Half>;

// A D x H x W volume in a channel block's buffer laid out `layout` (the volume at the layout's
// lo corner). A dense volume with rows of 10 or fewer goes through the transposes in flat chunks
// across its rows (7x7 planes: 4 transposes instead of 7; 10x10: 7 instead of 10): `flat` holds
// each position's layout index for them, computed once per call (per chunk, the index
// arithmetic cost more than the transposes saved), up to 4096 positions (16 KB, beside a task's
// buffers in the L1); empty, row by row (rows of 14: 13 chunks instead of 14, no faster; v35 in
// benchmarks/cpu_direct_notes.md).
struct BlockVolume {
  int64_t D, H, W;
  Padded layout;
  std::vector<int32_t> flat;
  BlockVolume(int64_t D, int64_t H, int64_t W, const Padded& layout)
      : D(D), H(H), W(W), layout(layout) {
    if (W > 10 || D * H * W > 4096) return;
    flat.reserve(D * H * W);
    for (int64_t i = 0; i < D; ++i)
      for (int64_t j = 0; j < H; ++j)
        for (int64_t k = 0; k < W; ++k)
          flat.push_back(static_cast<int32_t>(
              layout.at(i + layout.lo_d, j + layout.lo_h, k + layout.lo_w)));
  }
};

// A row chunk's positions: consecutive from its first.
struct Consecutive {
  int64_t first;
  int64_t operator[](int64_t q) const { return first + q; }
};

// Calls chunk(offset, columns, width, at) for chunks of up to 16 positions of volume v (strides
// s, unit width stride), in order: `columns` (<= 16) positions from element `offset`, `width`
// values to read or write there, and at[q] position q's index in v's layout. Flat chunks (where v
// has them and is dense) end with one overlapping the chunk before it, its repeated positions
// read and written again with the same values. Row chunks take 16 columns where those stay inside
// the volume (a short row's run into the next rows: ignored on reading, written over later on
// writing, as the rows go in order), else `columns`. Masked loads and stores, slow on this CPU,
// are thus left for volumes of fewer than 16 positions and the last row of a strided one.
template <typename Chunk>
inline void volume_chunks(const Strides& s, const BlockVolume& v, const Chunk& chunk) {
  const bool dense = s.h == v.W && s.d == v.H * v.W;
  const int64_t volume = v.D * v.H * v.W;
  if (dense && !v.flat.empty()) {
    const int64_t columns = std::min<int64_t>(16, volume);
    for (int64_t next = 0; next < volume; next += 16) {
      const int64_t first = std::min(next, volume - columns);
      chunk(first, columns, columns, v.flat.data() + first);
    }
    return;
  }
  const Padded& layout = v.layout;
  for (int64_t i = 0; i < v.D; ++i)
    for (int64_t j = 0; j < v.H; ++j)
      for (int64_t k = 0; k < v.W; k += 16) {
        const int64_t columns = std::min<int64_t>(16, v.W - k);
        const bool inside = dense && (i * v.H + j) * v.W + k + 16 <= volume;
        const Consecutive at{layout.at(i + layout.lo_d, j + layout.lo_h, k + layout.lo_w)};
        chunk(i * s.d + j * s.h + k, columns, columns == 16 || inside ? int64_t(16) : columns, at);
      }
}

// Zeros in the padding positions of buf (laid out [p][L] around a D x H x W volume), everywhere
// when `all` (a block with fewer than L channels leaves lanes unwritten: they keep zeros or
// another block's values, which only the same lanes of the results read).
template <typename acc_t>
void zero_padding(acc_t* buf, const Padded& p, int64_t D, int64_t H, int64_t W, bool all) {
  constexpr int64_t L = lanes<acc_t>();
  if (all) {
    std::fill_n(buf, p.size() * L, acc_t(0));
    return;
  }
  for (int64_t i = 0; i < p.d; ++i)
    for (int64_t j = 0; j < p.h; ++j) {
      acc_t* row = buf + p.at(i, j, 0) * L;
      if (i < p.lo_d || i >= p.lo_d + D || j < p.lo_h || j >= p.lo_h + H) {
        std::fill_n(row, p.w * L, acc_t(0));
      } else {
        std::fill_n(row, p.lo_w * L, acc_t(0));
        std::fill_n(row + (p.lo_w + W) * L, (p.w - p.lo_w - W) * L, acc_t(0));
      }
    }
}

// body(rows) for a block of `count` channels, with 16 as a constant for a whole block, so that
// the transposes' per-row checks fold away there.
template <typename Body>
inline void whole_or_partial_block(int64_t count, const Body& body) {
  if (count == 16)
    body(std::integral_constant<int64_t, 16>{});
  else
    body(count);
}

// Channels [0, count) of a volume (strides s) into their positions in buf (laid out
// [vol.layout][L]), through load_columns where transposable. The padding positions are never
// written: zero_padding fills them once for every block of the same layout.
template <typename scalar_t, typename acc_t>
void gather_channels(const scalar_t* v, const Strides& s, int64_t count, const BlockVolume& vol,
                     acc_t* buf) {
  constexpr int64_t L = lanes<acc_t>();
#ifdef DIAGONALWISE_TRANSPOSE
  if constexpr (kTransposable<scalar_t, acc_t>) {
    if (s.w == 1) {
      whole_or_partial_block(count, [&](auto rows) {
        volume_chunks(s, vol, [&](int64_t offset, int64_t columns, int64_t width, const auto& at) {
          vec_t<float> r[16];
          load_columns(v + offset, s.c, int64_t(rows), width, r);
          for (int64_t q = 0; q < columns; ++q) vstore(buf + at[q] * L, r[q]);
        });
      });
      return;
    }
  }
#endif
  const Padded& p = vol.layout;
  for (int64_t c = 0; c < count; ++c)
    for (int64_t i = 0; i < vol.D; ++i)
      for (int64_t j = 0; j < vol.H; ++j) {
        const scalar_t* row = v + c * s.c + i * s.d + j * s.h;
        acc_t* out = buf + p.at(i + p.lo_d, j + p.lo_h, p.lo_w) * L + c;
        for (int64_t k = 0; k < vol.W; ++k) out[k * L] = static_cast<acc_t>(row[k * s.w]);
      }
}

// The inverse: channels [0, count) of the volume's positions in buf back to planes.
template <typename scalar_t, typename acc_t>
void scatter_channels(const acc_t* buf, const BlockVolume& vol, int64_t count, scalar_t* v,
                      const Strides& s) {
  constexpr int64_t L = lanes<acc_t>();
#ifdef DIAGONALWISE_TRANSPOSE
  if constexpr (kTransposable<scalar_t, acc_t>) {
    if (s.w == 1) {
      whole_or_partial_block(count, [&](auto rows) {
        volume_chunks(s, vol, [&](int64_t offset, int64_t columns, int64_t width, const auto& at) {
          vec_t<float> r[16];
          for (int64_t q = 0; q < 16; ++q) r[q] = q < columns ? vload(buf + at[q] * L) : vec_t<float>{};
          store_columns(r, v + offset, s.c, int64_t(rows), width);
        });
      });
      return;
    }
  }
#endif
  const Padded& p = vol.layout;
  for (int64_t c = 0; c < count; ++c)
    for (int64_t i = 0; i < vol.D; ++i)
      for (int64_t j = 0; j < vol.H; ++j) {
        scalar_t* row = v + c * s.c + i * s.d + j * s.h;
        const acc_t* in = buf + p.at(i + p.lo_d, j + p.lo_h, p.lo_w) * L + c;
        for (int64_t k = 0; k < vol.W; ++k) row[k * s.w] = from_acc<scalar_t>(in[k * L]);
      }
}

// The weight as [channel block][tap][L] and the bias as [channel block][L], zeros past the last
// channel: once per call, not per (sample, block) task.
template <typename scalar_t, typename acc_t>
void block_weights(const scalar_t* w, const scalar_t* b, const Geometry& g, Buffer<acc_t>& wt,
                   Buffer<acc_t>& bias) {
  constexpr int64_t L = lanes<acc_t>();
  const int64_t groups = (g.C + L - 1) / L;
  wt.assign(groups * g.taps() * L, acc_t(0));
  bias.assign(groups * L, acc_t(0));
  for (int64_t c = 0; c < g.C; ++c) {
    acc_t* block = wt.data() + (c / L) * g.taps() * L + c % L;
    for (int64_t t = 0; t < g.taps(); ++t) block[t * L] = static_cast<acc_t>(w[c * g.taps() + t]);
    if (b) bias[c] = static_cast<acc_t>(b[c]);
  }
}

#if defined(DIAGONALWISE_TRANSPOSE) && defined(__AVX512BF16__)
#define DIAGONALWISE_BFLOAT16_PAIRS 1
// bfloat16 window sums (the channel blocks' forward and stride-1 input gradient) by `vdpbf16ps`
// (two products of bfloat16 pairs added to a float lane): a row of KW taps (odd) in (KW - 1) / 2
// of them and one multiply-add instead of KW multiply-adds. On this project's CPU (AMD Zen 4) the
// instruction is exactly two float32 multiply-adds, each rounded to nearest even, the pair's
// upper half first (checked bitwise on 3.2 million lanes, v40 in cpu_direct_notes.md); with tap c
// in the upper half and tap c + 1 in the lower the taps go in the float32 tiles' order, so the
// results are the float32 path's to the bit, but for denormals, which it flushes to zero (as
// oneDNN's bfloat16 convolutions, which use it, do). The last tap takes the pair's upper half
// alone, as a float: no tap's partner outside the window (an inf there times a zero weight would
// be NaN).

// Channels [0, count) of a bfloat16 volume (strides s, unit width stride) into buf (laid out p,
// 32-bit lanes) as column pairs: lane c at a data row's column k (from k = -1 where there is
// padding before the row) holds channel c's value at k in its upper half and at k + 1 in its lower
// half, zero outside the row. The other padding positions keep their zeros (zero_padding).
inline void gather_pairs(const c10::BFloat16* v, const Strides& s, int64_t count,
                         const BlockVolume& vol, uint32_t* buf) {
  constexpr int64_t L = 16;
  const int64_t D = vol.D, H = vol.H, W = vol.W;
  const Padded& p = vol.layout;
  const bool dense = s.h == W && s.d == H * W;
  const int64_t volume = D * H * W;
  const __mmask32 lower_halves = 0x55555555u;
  auto rotated = [](bits_t a) { return _mm512_rol_epi32(__m512i(a), 16); };
  auto joined = [&](bits_t upper_of, bits_t lower_of) {
    return _mm512_mask_blend_epi16(lower_halves, __m512i(upper_of), __m512i(lower_of));
  };
  auto store = [&](uint32_t* row, int64_t column, __m512i pair) {
    _mm512_storeu_si512(row + column * L, pair);
  };
  for (int64_t i = 0; i < D; ++i)
    for (int64_t j = 0; j < H; ++j) {
      const c10::BFloat16* row = v + i * s.d + j * s.h;
      uint32_t* out = buf + p.at(i + p.lo_d, j + p.lo_h, p.lo_w) * L;
      bits_t previous{};  // the chunk before's last pair (columns 14 and 15)
      for (int64_t k = 0; k < W; k += 16) {
        const int64_t width = std::min<int64_t>(16, W - k);
        const bool inside = dense && (i * H + j) * W + k + 16 <= volume;
        bits_t pairs[8];
        load_column_pairs(row + k, s.c, count, inside ? 16 : width, pairs);
        if (width < 16)  // values read past the row (inside the volume) are not the row's
          for (int64_t m = 0; m < 8; ++m)
            if (2 * m >= width) pairs[m] = bits_t{};
            else if (2 * m + 1 == width) pairs[m] &= 0xFFFFu;
        if (k > 0 || p.lo_w > 0) store(out, k - 1, joined(previous, pairs[0]));
#pragma GCC unroll 8
        for (int64_t m = 0; m < 8; ++m) {
          if (2 * m < width) store(out, k + 2 * m, rotated(pairs[m]));
          if (m < 7 && 2 * m + 1 < width) store(out, k + 2 * m + 1, joined(pairs[m], pairs[m + 1]));
        }
        previous = pairs[7];
      }
      if (W % 16 == 0) store(out, W - 1, joined(previous, bits_t{}));
    }
}

// forward_tile's window tile (unit column stride, no dilation, KW odd) on pairs: TW output columns
// of one channel block from x (the tile's first column, as gather_pairs leaves it), the block's
// weight pairs and its float weights [tap][L] (for the last tap of each row).
template <int64_t TW, int64_t KW>
[[gnu::always_inline]] inline void forward_tile_pairs(const uint32_t* x, const uint32_t* wpairs,
                                                      const float* wt, const float* bias, float* y,
                                                      const int64_t* row_offsets, int64_t nrows) {
  constexpr int64_t L = 16, J = KW / 2;
  const __m512i upper_halves = _mm512_set1_epi32(int32_t(0xFFFF0000u));
  __m512 acc[TW];
  const __m512 b = _mm512_loadu_ps(bias);
#pragma GCC unroll 16
  for (int64_t i = 0; i < TW; ++i) acc[i] = b;
  for (int64_t r = 0; r < nrows; ++r) {
    const uint32_t* xr = x + row_offsets[2 * r];
    const int64_t first = row_offsets[2 * r + 1];
    __m512bh wv[J];
#pragma GCC unroll 4
    for (int64_t j = 0; j < J; ++j) wv[j] = __m512bh(_mm512_loadu_si512(wpairs + (first + j) * L));
    const __m512 last = _mm512_loadu_ps(wt + (first + KW - 1) * L);
#pragma GCC unroll 32
    for (int64_t c = 0; c < TW + KW - 1; ++c) {
      __m512i xv = _mm512_loadu_si512(xr + c * L);
      asm("" : "+v"(xv));  // one load for the column's products (see keep_in_register)
#pragma GCC unroll 4
      for (int64_t j = 0; j < J; ++j)
        if (c - 2 * j >= 0 && c - 2 * j < TW)
          acc[c - 2 * j] = _mm512_dpbf16_ps(acc[c - 2 * j], __m512bh(xv), wv[j]);
      if (c - (KW - 1) >= 0)
        acc[c - (KW - 1)] = _mm512_fmadd_ps(
            _mm512_castsi512_ps(_mm512_and_si512(xv, upper_halves)), last, acc[c - (KW - 1)]);
    }
  }
#pragma GCC unroll 16
  for (int64_t i = 0; i < TW; ++i) _mm512_storeu_ps(y + i * L, acc[i]);
}
#endif

// Whether a channel block's window sums over volume v (strides s) of geometry g go by pairs:
// bfloat16 where the CPU has AVX512_BF16, unit width stride and no dilation along the rows,
// windows of 3, 5 or 7 columns, rows gathered one by one (flat chunks gather the rows of 10 or
// fewer in fewer transposes: with pairs instead, 7x7 planes 0.9x, 5x5 0.86x; v40).
template <typename scalar_t>
bool window_pairs_apply([[maybe_unused]] const Geometry& g, [[maybe_unused]] const Strides& s,
                        [[maybe_unused]] const BlockVolume& v) {
#ifdef DIAGONALWISE_BFLOAT16_PAIRS
  return std::is_same_v<scalar_t, c10::BFloat16> && s.w == 1 && g.SW == 1 && g.DW == 1 &&
         has_window_tiles(g.KW) && v.flat.empty();
#else
  return false;
#endif
}

// The weights as pairs for forward_tile_pairs where `pairs` (else none), from the float weights
// [channel block][tap][L] (block_weights, or the input gradient's flipped ones), which hold
// bfloat16 values: pair j of a row of KW taps at the row's first tap's index + j, tap 2j in the
// upper half, 2j + 1 in the lower.
template <typename acc_t>
Buffer<uint32_t> block_weight_pairs(const Buffer<acc_t>& wt, int64_t taps, int64_t KW,
                                    bool pairs) {
  constexpr int64_t L = 16;
  Buffer<uint32_t> result;
  if constexpr (std::is_same_v<acc_t, float>) {
    if (!pairs) return result;
    result.assign(wt.size(), 0);
    auto bits = [&](int64_t index) {
      uint32_t word;
      std::memcpy(&word, &wt[index], sizeof word);
      return word >> 16;
    };
    for (int64_t block = 0; block < static_cast<int64_t>(wt.size()) / (taps * L); ++block)
      for (int64_t first = 0; first < taps; first += KW)
        for (int64_t j = 0; 2 * j + 1 < KW; ++j)
          for (int64_t c = 0; c < L; ++c) {
            const int64_t tap = (block * taps + first + 2 * j) * L + c;
            result[(block * taps + first + j) * L + c] = bits(tap) << 16 | bits(tap + L);
          }
  }
  return result;
}

// A channel block's volume into buf: as pairs (gather_pairs) where `pairs`, else as floats.
template <typename scalar_t, typename acc_t>
void gather_block(const scalar_t* v, const Strides& s, int64_t count, const BlockVolume& vol,
                  [[maybe_unused]] bool pairs, acc_t* buf) {
#ifdef DIAGONALWISE_BFLOAT16_PAIRS
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>)
    if (pairs) return gather_pairs(v, s, count, vol, reinterpret_cast<uint32_t*>(buf));
#endif
  gather_channels(v, s, count, vol, buf);
}

// Output row (od, oh)'s input rows in layout p that hold data (not only padding), as
// (offset * lanes, index of the row's first tap); with `every_row`, those in the height's padding
// too (a joined row's, see plane_rows).
inline int64_t padded_rows(const Geometry& g, const Padded& p, int64_t od, int64_t oh,
                           int64_t lanes, int64_t* offsets, bool every_row = false) {
  int64_t count = 0;
  for (int64_t kd = 0; kd < g.KD; ++kd) {
    const int64_t i = od * g.SD + kd * g.DD;
    if (i < g.PD || i >= g.PD + g.D) continue;
    for (int64_t kh = 0; kh < g.KH; ++kh) {
      const int64_t j = oh * g.SH + kh * g.DH;
      if (!every_row && (j < g.PH || j >= g.PH + g.H)) continue;
      offsets[2 * count] = p.at(i, j, 0) * lanes;
      offsets[2 * count + 1] = (kd * g.KH + kh) * g.KW;
      ++count;
    }
  }
  return count;
}

// Ahead of a channel-block task: part `part` of `parts` of the block's planes of volume v
// (strides s), into the L2 while the current task computes, where each plane is dense. Not into
// the L1: a task's buffers alone fill it from 14x14 planes on (16, 16 and 12.5 KB in the float32
// backward), and the next block fetched there was evicted before its gather read it. `written`:
// planes the task writes, read in so that the scatter's stores find their lines rather than wait
// for them, where the block's planes fit in 32 KB (float32 14x14 and 7x7 planes 1.1x; blocks of
// 50-100 KB 0.95x; v30 in cpu_direct_notes.md). Parts: see prefetch_parts.
template <typename scalar_t>
inline void prefetch_block(const scalar_t* v, const Strides& s, int64_t count, int64_t D,
                           int64_t H, int64_t W, int64_t part, int64_t parts,
                           bool written = false) {
  if (s.w != 1 || s.h != W || s.d != H * W) return;
  const int64_t volume = D * H * W, bytes = volume * static_cast<int64_t>(sizeof(scalar_t));
  if (written && count * bytes > (32 << 10)) return;
  const char* first_plane = reinterpret_cast<const char*>(v);
  const int64_t planes = s.c == volume ? 1 : count;  // one range where the planes adjoin
  const int64_t span = planes == 1 ? count * bytes : bytes;
  const int64_t lines = (span + 63) / 64, first = lines * part / parts,
                end = lines * (part + 1) / parts;
  for (int64_t c = 0; c < planes && end > first; ++c)
    prefetch<false>(first_plane + c * s.c * static_cast<int64_t>(sizeof(scalar_t)) + first * 64,
                    (end - first) * 64);
}

// Over how many of a task's `rows` the next block's prefetches (`lines` cache lines) spread: up to
// 128 lines at once before the first row; more, 64 lines before each row from the first on. At
// once, a float32 14x14 forward task's 392 lines held it up behind them (16x512x14x14 with the
// caches cleared before each call: forward 1.4x-1.6x, step 1.45x faster spread); spread thinner,
// over every row (a 10x10 backward's 300 lines, 15 a row), the last shares came too late: 6-10%
// slower (v31 in cpu_direct_notes.md).
inline int64_t prefetch_parts(int64_t lines, int64_t rows) {
  return lines <= 128 ? 1 : std::clamp<int64_t>((lines + 63) / 64, 1, std::max<int64_t>(rows, 1));
}

// The cache lines of a channel block's planes of `volume` elements.
template <typename scalar_t>
constexpr int64_t block_lines(int64_t volume) {
  return lanes<at::opmath_type<scalar_t>>() * volume * static_cast<int64_t>(sizeof(scalar_t)) / 64;
}

// The channel blocks' RowBounds for rows of `columns`: every tap of every output lies inside the
// padded buffer, so no tile's window reaches past a row; the tiles as few as fit, 16 wide for
// windows of 3 taps too (their columns lie one vector apart, not a pixel apart as in
// channels_last). Rows of 7 in one tile, not 4 + 2 + 1: 7x7 planes float32 1.07x-1.12x, bfloat16
// 1.2x (v26 in cpu_direct_notes.md).
inline RowBounds padded_row_bounds(const Geometry& g, int64_t columns) {
  RowBounds bounds{true, 0, 0, {}, false};
  if (has_window_tiles(g.KW)) bounds.widths = fewest_tile_widths(columns, true);
  return bounds;
}

// A channel block's output rows as the window sums take them, short rows joined: with unit
// strides, output (oh, ow) reads its taps at oh * p.w + ow in the buffer plus the tap's own
// offset, so a plane's OH rows of OW columns, laid out p.w apart in the output buffer too
// (`width`), go as one row of (OH - 1) * p.w + OW `columns`, whose columns between the rows sum
// over the buffer's padding and are not stored: one row's offsets and tiles for the plane's.
// Joined for windows of up to 3 columns, rows of up to 10 and at most a third more columns:
// 5x5 to 10x10 planes' forward and input gradient 1.02x-1.12x; 14x14 1.0x, 28x28 0.97x, 5x5 and
// 7x7 windows (whose tiles are 16 wide already) 0.86x-0.90x (v39 in cpu_direct_notes.md).
struct PlaneRows {
  bool joined = false;
  int64_t columns = 0, width = 0;
  RowBounds bounds;
};

inline PlaneRows plane_rows(const Geometry& g, const Padded& p) {
  const int64_t extra = (g.OH - 1) * (p.w - g.OW);  // the columns between the rows
  const bool joined = g.SH == 1 && g.SW == 1 && g.KW <= 3 && g.OH > 1 && g.OW <= 10 &&
                      3 * extra <= g.OH * g.OW;
  const int64_t columns = joined ? (g.OH - 1) * p.w + g.OW : g.OW;
  return {joined, columns, joined ? p.w : g.OW, padded_row_bounds(g, columns)};
}

// One channel block's window sums: every output row of g from buf (laid out p, gathered), weights
// [tap][L], into out (laid out out_layout, rows.width wide). Every tap of every output lies
// inside the padded buffer, so every column takes the whole window (taps into the padding add
// products with its zeros) and the rows go through the window tiles end to end: 1.07x-2.3x faster
// on planes of 28x28 down to 4x4 than border columns one at a time with only their valid taps
// (v8e); in rows as plane_rows has them. Rows wholly in the padding are left out, unless joined.
// `offsets` holds 2 * KD * KH. ahead(row) runs before each output row (the next task's
// prefetches).
// `weight_pairs` (bfloat16, DIAGONALWISE_BFLOAT16_PAIRS): buf holds gather_pairs' pairs and the
// tiles are forward_tile_pairs.
template <typename acc_t, typename Ahead>
void block_window_sums(const acc_t* buf, const Padded& p, const Geometry& g,
                       const WindowTaps& window, const PlaneRows& rows, const acc_t* wt,
                       const acc_t* bias, acc_t* out, const Padded& out_layout, int64_t* offsets,
                       const Ahead& ahead, const uint32_t* weight_pairs = nullptr) {
  constexpr int64_t L = lanes<acc_t>();
  const int64_t step = rows.joined ? g.OH : 1;
  for (int64_t od = 0; od < g.OD; ++od)
    for (int64_t oh = 0; oh < g.OH; oh += step) {
      for (int64_t row = oh; row < oh + step; ++row) ahead(od * g.OH + row);
      const int64_t nrows = padded_rows(g, p, od, oh, L, offsets, rows.joined);
      acc_t* orow = out + out_layout.at(od, oh, 0) * L;
      auto tile = [&](auto tw, auto nb, int64_t ow, int64_t, const ColumnTaps& taps) {
        constexpr int64_t TW = decltype(tw)::value;
#ifdef DIAGONALWISE_BFLOAT16_PAIRS
        if constexpr (std::is_same_v<acc_t, float>)
          if (weight_pairs) {
            const uint32_t* x = reinterpret_cast<const uint32_t*>(buf) + ow * L;
            float* y = orow + ow * L;
            if (g.KW == 3)
              forward_tile_pairs<TW, 3>(x, weight_pairs, wt, bias, y, offsets, nrows);
            else if (g.KW == 5)
              forward_tile_pairs<TW, 5>(x, weight_pairs, wt, bias, y, offsets, nrows);
            else
              forward_tile_pairs<TW, 7>(x, weight_pairs, wt, bias, y, offsets, nrows);
            return;
          }
#endif
        forward_tile<acc_t, acc_t, TW, decltype(nb)::value>(
            buf + ow * g.SW * L, g.SW * L, wt, L, bias, orow + ow * L, L, offsets, nrows, taps);
      };
      tile_row(rows.columns, 0, rows.columns, L, L, window.all(),
               [&](int64_t) { return window.all(); }, tile, rows.bounds);
    }
}

template <typename scalar_t>
void forward_blocked(const scalar_t* x, Strides xs, const scalar_t* w, const scalar_t* b,
                     scalar_t* y, Strides ys, const Geometry& g) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int64_t L = lanes<acc_t>();
  const Padded p = strided_layout(g);
  const PlaneRows rows = plane_rows(g, p);
  const Padded out_layout{g.OD, g.OH, rows.width, 0, 0, 0};
  const int64_t groups = (g.C + L - 1) / L;
  const WindowTaps window(g, L);
  const BlockVolume in_volume(g.D, g.H, g.W, p), out_volume(g.OD, g.OH, g.OW, out_layout);
  Buffer<acc_t> block_wt, block_bias;
  block_weights(w, b, g, block_wt, block_bias);
  const bool pairs = window_pairs_apply<scalar_t>(g, xs, in_volume);
  const Buffer<uint32_t> weight_pairs = block_weight_pairs(block_wt, g.taps(), g.KW, pairs);
  const int64_t parts = prefetch_parts(
      block_lines<scalar_t>(g.D * g.H * g.W) + block_lines<scalar_t>(g.OD * g.OH * g.OW),
      g.OD * g.OH);
  at::parallel_for(0, g.N * groups, 1, [&](int64_t begin, int64_t end) {
    Buffer<acc_t> buf(p.size() * L), out(out_layout.size() * L);
    zero_padding(buf.data(), p, g.D, g.H, g.W, g.C % L != 0);
    std::vector<int64_t> offsets(2 * g.KD * g.KH);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / groups, c0 = (task % groups) * L, count = std::min(L, g.C - c0);
      gather_block(x + n * xs.n + c0 * xs.c, xs, count, in_volume, pairs, buf.data());
      const int64_t next_n = (task + 1) / groups, next_c0 = ((task + 1) % groups) * L;
      const int64_t next_count = std::min(L, g.C - next_c0);
      block_window_sums(buf.data(), p, g, window, rows,
                        block_wt.data() + (task % groups) * g.taps() * L,
                        block_bias.data() + (task % groups) * L, out.data(), out_layout,
                        offsets.data(), [&](int64_t row) {
                          if (task + 1 >= end || row >= parts) return;
                          prefetch_block(x + next_n * xs.n + next_c0 * xs.c, xs, next_count, g.D,
                                         g.H, g.W, row, parts);
                          prefetch_block(y + next_n * ys.n + next_c0 * ys.c, ys, next_count,
                                         g.OD, g.OH, g.OW, row, parts, true);
                        },
                        pairs ? weight_pairs.data() + (task % groups) * g.taps() * L : nullptr);
      scatter_channels(out.data(), out_volume, count, y + n * ys.n + c0 * ys.c, ys);
    }
  });
}

// One task per (sample, channel block): the weight and bias sums of each task are kept apart and
// added over the samples in order afterwards (deterministic); x and dy are read once for all three.
template <typename scalar_t>
void backward_blocked(const scalar_t* dy, Strides dys, const scalar_t* x, Strides xs,
                      const scalar_t* w, scalar_t* dx, Strides dxs, scalar_t* dw, scalar_t* db,
                      const Geometry& g) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int64_t L = lanes<acc_t>();
  const Padded p = strided_layout(g);
  const int64_t groups = (g.C + L - 1) / L, taps = g.taps(), sums = (taps + 1) * L;
  const WindowTaps window(g, L);
  // the stride-1 input gradient as the forward's window sums over dy padded in the buffer, with
  // the taps flipped (per-row column phases cost more on small planes); strided, by phases
  const bool as_forward = dx && input_grad_is_padded_forward(g);
  const Geometry transposed = input_grad_as_forward(g);
  const WindowTaps flipped_window(transposed, L);
  const RowBounds bounds = padded_row_bounds(g, g.OW);
  const std::vector<ColumnPhase> phases = as_forward ? std::vector<ColumnPhase>()
                                                     : column_phases(g, L);
  const Padded dy_layout =
      as_forward ? strided_layout(transposed) : Padded{g.OD, g.OH, g.OW, 0, 0, 0};
  const PlaneRows input_grad_rows =
      as_forward ? plane_rows(transposed, dy_layout) : PlaneRows{false, g.W, g.W, {}};
  const Padded dx_layout{g.D, g.H, input_grad_rows.width, 0, 0, 0};
  const BlockVolume dy_volume(g.OD, g.OH, g.OW, dy_layout), x_volume(g.D, g.H, g.W, p),
      dx_volume(g.D, g.H, g.W, dx_layout);
  const Strides blocked_dy(0, 1, g.OH * g.OW * L, g.OW * L, L);
  Buffer<acc_t> partial(dw || db ? g.N * groups * sums : 0, acc_t(0)), block_wt, zeros;
  block_weights(w, static_cast<const scalar_t*>(nullptr), g, block_wt, zeros);
  Buffer<acc_t> flipped_wt(as_forward ? block_wt.size() : 0);
  for (int64_t group = 0; as_forward && group < groups; ++group)
    for (int64_t tap = 0; tap < taps; ++tap)
      std::copy_n(block_wt.data() + (group * taps + tap) * L, L,
                  flipped_wt.data() + (group * taps + taps - 1 - tap) * L);
  // dy gathered as pairs for the input gradient's window sums (the weight gradient's tiles read
  // their upper halves)
  const bool pairs = as_forward && window_pairs_apply<scalar_t>(transposed, dys, dy_volume);
  const Buffer<uint32_t> weight_pairs = block_weight_pairs(flipped_wt, taps, g.KW, pairs);
  const int64_t dx_first_step = dw || db ? g.OD * g.OH : 0;
  const int64_t volume_lines = block_lines<scalar_t>(g.D * g.H * g.W);
  const int64_t parts = prefetch_parts(block_lines<scalar_t>(g.OD * g.OH * g.OW) +
                                           (dw ? volume_lines : 0) + (dx ? volume_lines : 0),
                                       dx_first_step + (dx ? g.D * g.H : 0));
  at::parallel_for(0, g.N * groups, 1, [&](int64_t begin, int64_t end) {
    Buffer<acc_t> xbuf(dw ? p.size() * L : 0), dybuf(dy_layout.size() * L);
    Buffer<acc_t> dxbuf(dx ? dx_layout.size() * L : 0);
    if (dw) zero_padding(xbuf.data(), p, g.D, g.H, g.W, g.C % L != 0);
    zero_padding(dybuf.data(), dy_layout, g.OD, g.OH, g.OW, g.C % L != 0);
    std::vector<int64_t> offsets(2 * g.KD * g.KH), scratch(2 * g.KW);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / groups, c0 = (task % groups) * L, count = std::min(L, g.C - c0);
      gather_block(dy + n * dys.n + c0 * dys.c, dys, count, dy_volume, pairs, dybuf.data());
      const int64_t next_n = (task + 1) / groups, next_c0 = ((task + 1) % groups) * L;
      const int64_t next_count = std::min(L, g.C - next_c0);
      // step: the row this task is about to compute, of the weight gradient's rows and then the
      // input gradient's
      auto ahead = [&](int64_t step) {
        if (task + 1 >= end || step >= parts) return;
        prefetch_block(dy + next_n * dys.n + next_c0 * dys.c, dys, next_count, g.OD, g.OH, g.OW,
                       step, parts);
        if (dw)
          prefetch_block(x + next_n * xs.n + next_c0 * xs.c, xs, next_count, g.D, g.H, g.W, step,
                         parts);
        if (dx)
          prefetch_block(dx + next_n * dxs.n + next_c0 * dxs.c, dxs, next_count, g.D, g.H, g.W,
                         step, parts, true);
      };
      if (dw || db) {
        acc_t* acc = partial.data() + task * sums;
        if (dw) gather_channels(x + n * xs.n + c0 * xs.c, xs, count, x_volume, xbuf.data());
        // dy: dybuf's floats, or the upper halves of its pairs
        auto weight_grads = [&](const auto* dy_columns) {
          for (int64_t od = 0; od < g.OD; ++od)
            for (int64_t oh = 0; oh < g.OH; ++oh) {
              ahead(od * g.OH + oh);
              const int64_t nrows = dw ? padded_rows(g, p, od, oh, L, offsets.data()) : 0;
              const auto* dyrow = dy_columns + dy_layout.at(od + dy_layout.lo_d,
                                                            oh + dy_layout.lo_h, dy_layout.lo_w) * L;
              auto tile = [&](auto tw, auto nb, int64_t ow, int64_t, const ColumnTaps& column_taps) {
                weight_grad_tile<acc_t, decltype(tw)::value, decltype(nb)::value>(
                    dyrow + ow * L, L, xbuf.data() + ow * g.SW * L, g.SW * L, acc, L,
                    acc + taps * L, offsets.data(), nrows, column_taps);
              };
              // every column with the whole window, as in block_window_sums (an inf in dy meets
              // the padding's zeros in a NaN, as in native's NCHW weight gradient)
              tile_row(g.OW, 0, g.OW, L, L, window.all(), [&](int64_t) { return window.all(); },
                       tile, bounds);
            }
        };
        if constexpr (std::is_same_v<acc_t, float>) {
          if (pairs) weight_grads(reinterpret_cast<const UpperHalves*>(dybuf.data()));
          else weight_grads(dybuf.data());
        } else {
          weight_grads(dybuf.data());
        }
      }
      if (as_forward) {
        block_window_sums(static_cast<const acc_t*>(dybuf.data()), dy_layout, transposed,
                          flipped_window, input_grad_rows,
                          flipped_wt.data() + (task % groups) * taps * L, zeros.data(),
                          dxbuf.data(), dx_layout, offsets.data(),
                          [&](int64_t row) { ahead(dx_first_step + row); },
                          pairs ? weight_pairs.data() + (task % groups) * taps * L : nullptr);
      } else if (dx) {
        for (int64_t id = 0; id < g.D; ++id)
          for (int64_t ih = 0; ih < g.H; ++ih) {
            ahead(dx_first_step + id * g.H + ih);
            const int64_t nrows = receiving_rows(g, blocked_dy, 0, id, ih, offsets.data());
            input_grad_row(static_cast<const acc_t*>(dybuf.data()), L,
                           block_wt.data() + (task % groups) * taps * L, L, zeros.data(),
                           offsets.data(), nrows, phases, g, L,
                           dxbuf.data() + (id * g.H + ih) * g.W * L, L, scratch.data());
          }
      }
      if (dx)
        scatter_channels(dxbuf.data(), dx_volume, count, dx + n * dxs.n + c0 * dxs.c, dxs);
    }
  });
  if (!dw && !db) return;
  over_channel_blocks(g.C, g.N * (taps + 1), [&](int64_t c0, int64_t c1) {
    const int64_t group = c0 / L;  // blocks of L channels: one group each
    auto sum_of = [&](int64_t t, acc_t* sum) {
      for (int64_t c = c0; c < c1; ++c) sum[c - c0] = 0;
      for (int64_t n = 0; n < g.N; ++n)
        for (int64_t c = c0; c < c1; ++c)
          sum[c - c0] += partial[(n * groups + group) * sums + t * L + c - c0];
    };
    store_channel_block<scalar_t, acc_t>(c0, c1, taps, sum_of, dw, db);
  }, L);
}

// ---------------------------------------------------------------------------------------------
// 1D rows (N, C, W) with unit width stride, stride 1, multiplier 1: Mamba-style causal conv1d

// Whether the layer is such rows: one input and one output row per (sample, channel), padding
// within the kernel's reach (causal, 'same', 'valid'), rows of 64 columns and more.
bool rows_apply(const at::Tensor& x, const Geometry& g) {
  return !channels_inner(x) && x.stride(4) == 1 && g.M == 1 && g.D == 1 && g.H == 1 &&
         g.KD == 1 && g.KH == 1 && g.OD == 1 && g.OH == 1 && g.SW == 1 &&
         g.PW <= (g.KW - 1) * g.DW && g.W >= 64;
}

// The first `count` (all when count >= lanes) values of v as out_t at out.
template <typename out_t, typename acc_t>
inline void store_row_vector(out_t* out, vec_t<acc_t> v, int64_t count) {
  constexpr int64_t L = lanes<acc_t>();
  if (count >= L) return store_vector<out_t, acc_t>(out, v);
  acc_t values[L];
  std::memcpy(values, &v, sizeof v);
  for (int64_t j = 0; j < count; ++j) out[j] = from_acc<out_t>(values[j]);
}

// out[i] = sum_k w[k] * in[i + k * step] for i in [0, count): `in` (acc_t) padded with zeros up
// to count + (taps - 1) * step + lanes; the taps' weights in registers while the row streams.
template <typename out_t, typename acc_t>
inline void row_taps(const acc_t* in, const acc_t* w, int64_t taps, int64_t step, acc_t bias,
                     out_t* out, int64_t count) {
  constexpr int64_t L = lanes<acc_t>();
  for (int64_t i = 0; i < count; i += L) {
    vec_t<acc_t> acc = vec_t<acc_t>{} + bias;
    for (int64_t k = 0; k < taps; ++k) acc += vload(in + i + k * step) * w[k];
    store_row_vector<out_t, acc_t>(out + i, acc, count - i);
  }
}

// `count` values of `in` into `out` (acc_t) from `out[first]` on, zeros around them up to `size`.
template <typename scalar_t, typename acc_t>
inline void padded_row(const scalar_t* in, int64_t count, int64_t first, acc_t* out,
                       int64_t size) {
  const int64_t lo = std::clamp<int64_t>(first, 0, size);
  const int64_t hi = std::clamp<int64_t>(first + count, lo, size);
  std::fill(out, out + lo, acc_t(0));
  convert_span(in + (lo - first), out + lo, hi - lo);
  std::fill(out + hi, out + size, acc_t(0));
}

// Forward of rows (rows_apply): per (sample, channel) row, the input row converted into a
// zero-padded buffer in the L1, then each output vector from the taps' shifted loads. The
// channel blocks took a causal 8x512x512 conv1d (4 taps) at 1.2 ms, through transposes the rows
// do not need (v34 in cpu_direct_notes.md).
template <typename scalar_t>
void forward_rows(const scalar_t* x, Strides xs, const scalar_t* w, const scalar_t* b,
                  scalar_t* y, Strides ys, const Geometry& g) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int64_t L = lanes<acc_t>();
  const int64_t size = g.OW + (g.KW - 1) * g.DW + L;
  at::parallel_for(0, g.N * g.C, 1, [&](int64_t begin, int64_t end) {
    Buffer<acc_t> row(size), weights(g.KW);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / g.C, c = r % g.C;
      for (int64_t k = 0; k < g.KW; ++k) weights[k] = static_cast<acc_t>(w[c * g.KW + k]);
      padded_row(x + n * xs.n + c * xs.c, g.W, g.PW, row.data(), size);
      row_taps(row.data(), weights.data(), g.KW, g.DW, b ? static_cast<acc_t>(b[c]) : acc_t(0),
               y + n * ys.n + c * ys.c, g.OW);
    }
  });
}

// Backward of rows: each task takes a range of channels and reads, sample by sample, their x and
// dy rows once (consecutive rows, one stream; channel by channel the rows lay 1 MB apart on a
// 8x512x512 layer and the backward took 2.0 ms, v34) for the input gradient (a forward over dy
// with the taps reversed), the weight gradient (per channel and tap a vector of sums, over the
// samples in order, then the columns) and the bias gradient.
template <typename scalar_t>
void backward_rows(const scalar_t* dy, Strides dys, const scalar_t* x, Strides xs,
                   const scalar_t* w, scalar_t* dx, Strides dxs, scalar_t* dw, scalar_t* db,
                   const Geometry& g) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int64_t L = lanes<acc_t>();
  const int64_t reach = (g.KW - 1) * g.DW, sums_per_channel = g.KW + 1;  // the taps', the bias's
  const int64_t dy_size = g.W + reach + L, x_size = g.OW + reach + L;
  const int64_t columns = (g.OW + L - 1) / L * L;  // dy's vectors, zeros past OW
  at::parallel_for(0, g.C, 1, [&](int64_t begin, int64_t end) {
    Buffer<acc_t> dy_row(dy_size), x_row(x_size), reversed(g.KW);
    std::vector<vec_t<acc_t>> sums((end - begin) * sums_per_channel, vec_t<acc_t>{});
    for (int64_t n = 0; n < g.N; ++n)
      for (int64_t c = begin; c < end; ++c) {
        // dy column j at reach - PW + j: dx[i] = sum_k w[k] dy[i + PW - k DW] reads it at
        // i + (KW - 1 - k) DW
        padded_row(dy + n * dys.n + c * dys.c, g.OW, reach - g.PW, dy_row.data(), dy_size);
        if (dx) {
          for (int64_t k = 0; k < g.KW; ++k)
            reversed[k] = static_cast<acc_t>(w[c * g.KW + g.KW - 1 - k]);
          row_taps(dy_row.data(), reversed.data(), g.KW, g.DW, acc_t(0),
                   dx + n * dxs.n + c * dxs.c, g.W);
        }
        if (!dw && !db) continue;
        padded_row(x + n * xs.n + c * xs.c, g.W, g.PW, x_row.data(), x_size);
        const acc_t* dyp = dy_row.data() + reach - g.PW;  // dy column 0, zeros past OW
        vec_t<acc_t>* channel_sums = sums.data() + (c - begin) * sums_per_channel;
        // the sums in registers for up to 7 taps: through memory, each added to its previous
        // value waited for it to be stored and loaded again
        auto sum_taps = [&](auto taps) {
          constexpr int64_t K = decltype(taps)::value;
          const int64_t count = K ? K : g.KW;
          vec_t<acc_t> in_registers[K ? K : 1];
          vec_t<acc_t>* tap_sums = K ? in_registers : channel_sums;
          vec_t<acc_t> bias_sum = channel_sums[g.KW];
          if constexpr (K > 0)
            for (int64_t k = 0; k < K; ++k) in_registers[k] = channel_sums[k];
          for (int64_t j = 0; j < columns; j += L) {
            const vec_t<acc_t> d = vload(dyp + j);
            bias_sum += d;
            for (int64_t k = 0; k < count; ++k)
              tap_sums[k] += d * vload(x_row.data() + j + k * g.DW);
          }
          if constexpr (K > 0)
            for (int64_t k = 0; k < K; ++k) channel_sums[k] = in_registers[k];
          channel_sums[g.KW] = bias_sum;
        };
        switch (g.KW) {
          case 2: sum_taps(constant<2>{}); break;
          case 3: sum_taps(constant<3>{}); break;
          case 4: sum_taps(constant<4>{}); break;
          case 5: sum_taps(constant<5>{}); break;
          case 7: sum_taps(constant<7>{}); break;
          default: sum_taps(constant<0>{});
        }
      }
    for (int64_t c = begin; c < end; ++c)
      for (int64_t k = 0; k < sums_per_channel; ++k) {
        acc_t total = 0;
        const vec_t<acc_t> v = sums[(c - begin) * sums_per_channel + k];
        for (int64_t l = 0; l < L; ++l) total += v[l];
        if (k < g.KW && dw) dw[c * g.KW + k] = static_cast<scalar_t>(total);
        if (k == g.KW && db) db[c] = static_cast<scalar_t>(total);
      }
  });
}

// ---------------------------------------------------------------------------------------------
// entry points

// Width-innermost layers with multiplier 1 go through channel blocks (MobileNet V1, float32:
// 1.3x-1.9x faster than whole planes or v1's row loops up to 56x56, as fast on 112x112); with a
// multiplier, stride-1 layers take whole planes, 3x faster than the row loops (v7 and v8 in
// benchmarks/cpu_direct_notes.md).
bool use_blocked(const Geometry& g) { return g.M == 1; }

// Channels-innermost layers through the channels-inner tiles: multiplier 1 and at least one
// vector of channels. Else (a channel multiplier, fewer channels than a vector) the channel
// blocks and width-inner orders read them as any strided view: per pixel with the channels in a
// vector, 8 float32 channels_last channels ran 0.06x native and multiplier 2 0.12x-0.18x; this
// way 0.49x and 0.44x-1.24x (v33 in cpu_direct_notes.md).
template <typename scalar_t>
bool channels_inner_tiles_apply(const at::Tensor& x, const Geometry& g) {
  return channels_inner(x) && g.M == 1 && g.C >= lanes<at::opmath_type<scalar_t>>();
}

}  // namespace

namespace diagonalwise {

void set_poison_outputs(bool on) { poison_outputs = on; }

int64_t set_streaming_threshold(int64_t bytes) { return std::exchange(streaming_threshold, bytes); }

at::Tensor depthwise_forward(const at::Tensor& x, const at::Tensor& weight,
                             const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                             at::IntArrayRef padding, at::IntArrayRef dilation,
                             at::IntArrayRef out_size) {
  TORCH_CHECK(x.device().is_cpu(), "cpu_depthwise: CPU tensors expected");
  const at::Tensor w = weight.contiguous();
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  Geometry g = geometry(x, w, stride, padding, dilation, out_size);
  at::Tensor y = allocate({g.N, g.O, g.OD, g.OH, g.OW}, x.options().memory_format(format_of(x)));
  if (y.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "cpu_depthwise_forward", [&] {
    const scalar_t* bp = b.defined() ? b.const_data_ptr<scalar_t>() : nullptr;
    if (channels_inner_tiles_apply<scalar_t>(x, g)) {
      forward_channels_inner_tiled<scalar_t>(x.const_data_ptr<scalar_t>(), Strides(x),
                                             w.const_data_ptr<scalar_t>(), bp,
                                             y.mutable_data_ptr<scalar_t>(), Strides(y), g);
    } else if (rows_apply(x, g)) {
      forward_rows<scalar_t>(x.const_data_ptr<scalar_t>(), Strides(x), w.const_data_ptr<scalar_t>(),
                             bp, y.mutable_data_ptr<scalar_t>(), Strides(y), g);
    } else if (use_blocked(g)) {
      forward_blocked<scalar_t>(x.const_data_ptr<scalar_t>(), Strides(x), w.const_data_ptr<scalar_t>(),
                                bp, y.mutable_data_ptr<scalar_t>(), Strides(y), g);
    } else if (planes_apply(g)) {
      forward_planes<scalar_t>(x.const_data_ptr<scalar_t>(), Strides(x), w.const_data_ptr<scalar_t>(),
                               bp, y.mutable_data_ptr<scalar_t>(), Strides(y), g);
    } else if (x.stride(4) == 1) {
      forward_width_inner<scalar_t, true>(x.const_data_ptr<scalar_t>(), Strides(x), w.const_data_ptr<scalar_t>(),
                                          bp, y.mutable_data_ptr<scalar_t>(), Strides(y), g);
    } else {
      forward_width_inner<scalar_t, false>(x.const_data_ptr<scalar_t>(), Strides(x), w.const_data_ptr<scalar_t>(),
                                           bp, y.mutable_data_ptr<scalar_t>(), Strides(y), g);
    }
  });
  return y;
}

std::vector<at::Tensor> depthwise_backward(const at::Tensor& grad_output, const at::Tensor& x,
                                           const at::Tensor& weight, at::IntArrayRef stride,
                                           at::IntArrayRef padding, at::IntArrayRef dilation,
                                           bool need_input, bool need_weight, bool need_bias) {
  TORCH_CHECK(x.device().is_cpu(), "cpu_depthwise: CPU tensors expected");
  const at::Tensor w = weight.contiguous();
  // dy in the layout this order reads best (a no-op when autograd hands it over so)
  const at::Tensor dy = grad_output.contiguous(format_of(x));
  Geometry g = geometry(x, w, stride, padding, dilation, dy.sizes().slice(2));
  at::Tensor dx = need_input ? allocate(x.sizes(), x.options().memory_format(format_of(x))) : at::Tensor();
  at::Tensor dw = need_weight ? allocate(w.sizes(), w.options()) : at::Tensor();
  at::Tensor db = need_bias ? allocate({g.O}, w.options()) : at::Tensor();
  if (dy.numel() == 0 || x.numel() == 0) {
    if (dx.defined()) dx.zero_();
    if (dw.defined()) dw.zero_();
    if (db.defined()) db.zero_();
    return {dx, dw, db};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "cpu_depthwise_backward", [&] {
    scalar_t* dwp = dw.defined() ? dw.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* dbp = db.defined() ? db.mutable_data_ptr<scalar_t>() : nullptr;
    if (channels_inner_tiles_apply<scalar_t>(x, g)) {
      if (dx.defined() && g.SD == 1 && g.SH == 1 && g.SW == 1) {
        forward_channels_inner_tiled<scalar_t>(dy.const_data_ptr<scalar_t>(), Strides(dy),
                                               w.const_data_ptr<scalar_t>(), nullptr,
                                               dx.mutable_data_ptr<scalar_t>(), Strides(dx),
                                               input_grad_as_forward(g), /*flipped=*/true);
      } else if (dx.defined()) {
        input_grad_channels_inner_phases<scalar_t>(dy.const_data_ptr<scalar_t>(), Strides(dy),
                                                   w.const_data_ptr<scalar_t>(),
                                                   dx.mutable_data_ptr<scalar_t>(), Strides(dx), g);
      }
      if (dwp || dbp)
        weight_grad_channels_inner_tiled<scalar_t>(dy.const_data_ptr<scalar_t>(), Strides(dy),
                                                   x.const_data_ptr<scalar_t>(), Strides(x), dwp, dbp, g);
    } else {
      scalar_t* dxp = dx.defined() ? dx.mutable_data_ptr<scalar_t>() : nullptr;
      const Strides dxs = dx.defined() ? Strides(dx) : Strides(x);
      if (rows_apply(x, g))  // dy, made contiguous like x, has unit-stride rows too
        backward_rows<scalar_t>(dy.const_data_ptr<scalar_t>(), Strides(dy), x.const_data_ptr<scalar_t>(),
                                Strides(x), w.const_data_ptr<scalar_t>(), dxp, dxs, dwp, dbp, g);
      else if (use_blocked(g))
        backward_blocked<scalar_t>(dy.const_data_ptr<scalar_t>(), Strides(dy), x.const_data_ptr<scalar_t>(),
                                   Strides(x), w.const_data_ptr<scalar_t>(), dxp, dxs, dwp, dbp, g);
      else if (input_grad_is_padded_forward(g))
        backward_planes<scalar_t>(dy.const_data_ptr<scalar_t>(), Strides(dy), x.const_data_ptr<scalar_t>(),
                                  Strides(x), w.const_data_ptr<scalar_t>(), dxp, dxs, dwp, dbp, g);
      else if (x.stride(4) == 1 && dy.stride(4) == 1)
        backward_width_inner<scalar_t, true>(dy.const_data_ptr<scalar_t>(), Strides(dy), x.const_data_ptr<scalar_t>(),
                                             Strides(x), w.const_data_ptr<scalar_t>(), dxp, dxs, dwp, dbp, g);
      else
        backward_width_inner<scalar_t, false>(dy.const_data_ptr<scalar_t>(), Strides(dy), x.const_data_ptr<scalar_t>(),
                                              Strides(x), w.const_data_ptr<scalar_t>(), dxp, dxs, dwp, dbp, g);
    }
  });
  return {dx, dw, db};
}

}  // namespace diagonalwise
