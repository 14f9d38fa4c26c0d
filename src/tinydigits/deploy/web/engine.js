// The models in the browser: a few plain JavaScript kernels (fp32 tensors, products summed in
// doubles), enough for tinydigits' networks once BatchNorm is folded away at export:
// conv (any kernel, stride and zero padding, square or not), ReLU, per-channel affine, max
// pool, global average pool, then log-softmax over the channels at each position. A model is
// the JSON document static_site.py writes (models/<name>.json): its layers, each tensor as
// base64 little-endian float32; a kernel, stride or padding is one number when square, else
// [rows, columns]. The digit models end in 10 values; the number reader in 11 per column.
"use strict";

window.tinydigitsEngine = (() => {
  const MEAN = 0.1307; // MNIST's, as tinydigits.data
  const STD = 0.3081;

  // A pixel's ink strength in [0, 1] normalized as in training, in fp32 as PyTorch does it.
  const normalize = (v) => Math.fround(Math.fround(Math.fround(v) - Math.fround(MEAN)) / Math.fround(STD));

  function floats(text) {
    if (text === null || text === undefined) return null;
    const binary = atob(text);
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    // The file's floats are little-endian, as the typed arrays of every browser's platform.
    return new Float32Array(bytes.buffer);
  }

  const pair = (v) => (Array.isArray(v) ? v : [v, v]);

  // A model document (parsed JSON) -> a model the kernels run.
  function load(document) {
    if (!document || document.format !== "tinydigits-js-1" || !Array.isArray(document.layers)) {
      throw new Error("not a tinydigits model file for this page (format tinydigits-js-1)");
    }
    const layers = document.layers.map((layer) => {
      if (layer.op === "conv") {
        return { ...layer, kernel: pair(layer.kernel), stride: pair(layer.stride), padding: pair(layer.padding),
          weight: floats(layer.weight), bias: floats(layer.bias) };
      }
      if (layer.op === "maxpool") return { ...layer, kernel: pair(layer.kernel), stride: pair(layer.stride) };
      if (layer.op === "affine") return { ...layer, scale: floats(layer.scale), shift: floats(layer.shift) };
      if (["relu", "gap"].includes(layer.op)) return layer;
      throw new Error(`unknown layer ${layer.op}`);
    });
    // Input pixels per output position, down and across: for the number reader, the strip
    // columns per output column (strips.COLUMN), which reading a strip needs.
    const stride = [1, 1];
    for (const layer of layers) {
      if (layer.stride) [stride[0], stride[1]] = [stride[0] * layer.stride[0], stride[1] * layer.stride[1]];
    }
    return { name: document.model, task: document.task || "digit", layers, stride };
  }

  // im2col: every (input channel, ky, kx) row of the output-sized planes it reads, zero
  // where the kernel hangs over the border; then each output plane is a sum of those rows
  // times one weight each, long contiguous loops a JIT compiles well.
  function conv(x, c, h, w, layer, work) {
    const { out: o, kernel: [kh, kw], stride: [sy, sx], padding: [py, px], weight, bias } = layer;
    const oh = Math.floor((h + 2 * py - kh) / sy) + 1;
    const ow = Math.floor((w + 2 * px - kw) / sx) + 1;
    const plane = oh * ow;
    const rows = c * kh * kw;
    let cols = x;
    if (kh !== 1 || kw !== 1 || sy !== 1 || sx !== 1 || py !== 0 || px !== 0) {
      if (work.cols.length < rows * plane) work.cols = new Float32Array(rows * plane);
      cols = work.cols;
      cols.fill(0, 0, rows * plane);
      for (let ic = 0; ic < c; ic++) {
        for (let ky = 0; ky < kh; ky++) {
          const y0 = Math.max(0, Math.ceil((py - ky) / sy));
          const y1 = Math.min(oh - 1, Math.floor((h - 1 + py - ky) / sy));
          for (let kx = 0; kx < kw; kx++) {
            const x0 = Math.max(0, Math.ceil((px - kx) / sx));
            const x1 = Math.min(ow - 1, Math.floor((w - 1 + px - kx) / sx));
            const to = ((ic * kh + ky) * kw + kx) * plane;
            for (let oy = y0; oy <= y1; oy++) {
              const from = ic * h * w + (oy * sy + ky - py) * w + kx - px;
              for (let ox = x0; ox <= x1; ox++) cols[to + oy * ow + ox] = x[from + ox * sx];
            }
          }
        }
      }
    }
    if (work.sum.length < 4 * plane) work.sum = new Float64Array(4 * plane);
    const sum = work.sum;
    const y = new Float32Array(o * plane);
    // Four output planes per pass over the rows, each row read once for all four; every
    // plane still sums its rows in order, so the result is the same as one at a time.
    let oc = 0;
    for (; oc + 4 <= o; oc += 4) {
      sum.fill(0, 0, 4 * plane);
      for (let r = 0; r < rows; r++) {
        const w0 = weight[oc * rows + r];
        const w1 = weight[(oc + 1) * rows + r];
        const w2 = weight[(oc + 2) * rows + r];
        const w3 = weight[(oc + 3) * rows + r];
        const at = r * plane;
        for (let i = 0; i < plane; i++) {
          const v = cols[at + i];
          sum[i] += w0 * v;
          sum[plane + i] += w1 * v;
          sum[2 * plane + i] += w2 * v;
          sum[3 * plane + i] += w3 * v;
        }
      }
      for (let k = 0; k < 4; k++) {
        const b = bias[oc + k];
        const to = (oc + k) * plane;
        for (let i = 0; i < plane; i++) y[to + i] = sum[k * plane + i] + b;
      }
    }
    for (; oc < o; oc++) {
      sum.fill(0, 0, plane);
      for (let r = 0; r < rows; r++) {
        const wv = weight[oc * rows + r];
        const at = r * plane;
        for (let i = 0; i < plane; i++) sum[i] += wv * cols[at + i];
      }
      const b = bias[oc];
      const to = oc * plane;
      for (let i = 0; i < plane; i++) y[to + i] = sum[i] + b;
    }
    return [y, o, oh, ow];
  }

  // Max pool without padding, rounding down as PyTorch's default (ceil_mode off).
  function maxpool(x, c, h, w, layer) {
    const { kernel: [kh, kw], stride: [sy, sx] } = layer;
    const oh = Math.floor((h - kh) / sy) + 1;
    const ow = Math.floor((w - kw) / sx) + 1;
    const y = new Float32Array(c * oh * ow);
    for (let ch = 0; ch < c; ch++) {
      for (let oy = 0; oy < oh; oy++) {
        for (let ox = 0; ox < ow; ox++) {
          let m = -Infinity;
          for (let ky = 0; ky < kh; ky++) {
            const row = ch * h * w + (oy * sy + ky) * w + ox * sx;
            for (let kx = 0; kx < kw; kx++) m = Math.max(m, x[row + kx]);
          }
          y[(ch * oh + oy) * ow + ox] = m;
        }
      }
    }
    return [y, c, oh, ow];
  }

  function newWork() {
    return { cols: new Float32Array(0), sum: new Float64Array(0) };
  }

  // The layers on a normalized c x h x w input: [output, channels, height, width].
  function forward(model, input, c, h, w, work = newWork()) {
    let x = input;
    for (const layer of model.layers) {
      if (layer.op === "conv") {
        [x, c, h, w] = conv(x, c, h, w, layer, work);
      } else if (layer.op === "relu") {
        if (x === input) x = Float32Array.from(x); // the caller's input is left alone
        for (let i = 0; i < x.length; i++) if (x[i] < 0) x[i] = 0;
      } else if (layer.op === "affine") {
        if (x === input) x = Float32Array.from(x);
        const plane = h * w;
        for (let ch = 0; ch < c; ch++) {
          const a = layer.scale ? layer.scale[ch] : 1;
          const b = layer.shift ? layer.shift[ch] : 0;
          for (let i = ch * plane; i < (ch + 1) * plane; i++) x[i] = x[i] * a + b;
        }
      } else if (layer.op === "maxpool") {
        [x, c, h, w] = maxpool(x, c, h, w, layer);
      } else if (layer.op === "gap") {
        const plane = h * w;
        const y = new Float32Array(c);
        for (let ch = 0; ch < c; ch++) {
          let s = 0;
          for (let i = ch * plane; i < (ch + 1) * plane; i++) s += x[i];
          y[ch] = s / plane;
        }
        [x, h, w] = [y, 1, 1];
      }
    }
    return [x, c, h, w];
  }

  // Log-softmax over the c channels at each of the `plane` positions, in doubles:
  // a Float64Array laid out as the input, channel-major (c x plane).
  function logSoftmax(x, c, plane) {
    const out = new Float64Array(c * plane);
    for (let i = 0; i < plane; i++) {
      let top = -Infinity;
      for (let ch = 0; ch < c; ch++) top = Math.max(top, x[ch * plane + i]);
      let total = 0;
      for (let ch = 0; ch < c; ch++) total += Math.exp(x[ch * plane + i] - top);
      const log = Math.log(total);
      for (let ch = 0; ch < c; ch++) out[ch * plane + i] = x[ch * plane + i] - top - log;
    }
    return out;
  }

  // Log-probabilities (Float64Array of 10) of one 28x28 picture given as uint8 (white on black,
  // as MNIST), normalized as in training: (v / 255 - mean) / std, in fp32.
  function run(model, pixels, work = newWork()) {
    const x = Float32Array.from(pixels, (v) => normalize(v / 255));
    const [y, c, h, w] = forward(model, x, 1, 28, 28, work);
    return logSoftmax(y, c, h * w);
  }

  // The number reader on a strip of `height` x `width` normalized pixels: {logProbs, columns},
  // the log-probabilities of the 10 digits and the blank per output column, class-major
  // (11 x columns), as PyTorch's [11, columns].
  function runStrip(model, pixels, height, width, work = newWork()) {
    const [y, c, h, w] = forward(model, pixels, 1, height, width, work);
    return { logProbs: logSoftmax(y, c, h * w), columns: h * w };
  }

  // Log-probabilities of `count` pictures of 784 bytes each, one after the other (the tests
  // feed the 10,000 MNIST test images through this): a Float32Array of count x 10.
  function runMany(model, bytes, count) {
    const out = new Float32Array(count * 10);
    const work = newWork();
    for (let n = 0; n < count; n++) out.set(run(model, bytes.subarray(n * 784, (n + 1) * 784), work), n * 10);
    return out;
  }

  return { load, run, runStrip, runMany, normalize, MEAN, STD };
})();
