// Reading whole numbers in the browser, on the ink map preprocess.js makes: a port of
// tinydigits.segment.digit_groups (8-connected components of the strokes, specks, ruled
// lines and frames dropped, the fragments of one digit merged), then of either reader (see
// the Python docstrings for the why of each step):
// - the number reader (read_number's "sequence" method: tinydigits.strips and .sequence): the
//   digits' ink as one strip 32 px tall, the reader network's log-probabilities per output column,
//   greedy CTC decoding, each digit's box from its columns;
// - the segmenter (its "segment" method), kept for a page that has no reader's weights (a
//   served page offering the browser; see app.js): groups wider than WIDE digit heights cut
//   where a digit model is surest of both sides, each digit framed as MNIST and classified.
"use strict";

window.tinydigitsRead = (() => {
  const P = window.tinydigitsPreprocess;
  const E = window.tinydigitsEngine;
  const MAX_DIGITS = 32;
  const INK = 0.35;
  const SPECK = 0.02;
  const OVERLAP = 0.5;
  const FRAGMENT = 0.6;
  const STROKE = 0.35;
  const LIGHT = 0.15;
  const WIDE = 1.2;
  const CUTS = 8;

  const median = (values) => {
    const sorted = Float64Array.from(values).sort();
    const n = sorted.length;
    return n % 2 ? sorted[(n - 1) / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2;
  };

  // A candidate digit: its ink alone (w x h), and where it sits in the ink map.
  function crop(piece) {
    const tight = P.cropToInk(piece.ink, piece.w, piece.h);
    if (!tight) return piece;
    return { ink: tight.data, w: tight.w, h: tight.h, top: piece.top + tight.top, left: piece.left + tight.left };
  }

  function columns(piece, from, to) {
    const w = to - from;
    const ink = new Float32Array(w * piece.h);
    for (let y = 0; y < piece.h; y++) ink.set(piece.ink.subarray(y * piece.w + from, y * piece.w + to), y * w);
    return crop({ ink, w, h: piece.h, top: piece.top, left: piece.left + from });
  }

  // The 8-connected strokes of an ink map (pixels above INK), numbered in raster order as
  // scipy's label numbers them: {labels (0: no stroke), count, boxes ([row start, row stop,
  // column start, column stop) of each)}.
  function strokes(ink, width, height) {
    const labels = new Int32Array(width * height);
    const boxes = [];
    let count = 0;
    const stack = [];
    for (let start = 0; start < labels.length; start++) {
      if (labels[start] || !(ink[start] > INK)) continue;
      count++;
      labels[start] = count;
      stack.push(start);
      const box = [Infinity, -Infinity, Infinity, -Infinity]; // rows [start, stop), cols [start, stop)
      while (stack.length) {
        const at = stack.pop();
        const y = Math.floor(at / width);
        const x = at % width;
        box[0] = Math.min(box[0], y);
        box[1] = Math.max(box[1], y + 1);
        box[2] = Math.min(box[2], x);
        box[3] = Math.max(box[3], x + 1);
        for (let ny = Math.max(0, y - 1); ny <= Math.min(height - 1, y + 1); ny++) {
          for (let nx = Math.max(0, x - 1); nx <= Math.min(width - 1, x + 1); nx++) {
            const next = ny * width + nx;
            if (!labels[next] && ink[next] > INK) {
              labels[next] = count;
              stack.push(next);
            }
          }
        }
      }
      boxes.push(box);
    }
    return { labels, count, boxes };
  }

  // segment.digit_groups: the separate digits of an ink map, left to right.
  function digitGroups(ink, width, height) {
    const { labels, count, boxes } = strokes(ink, width, height);
    const mass = [];
    if (count === 0) throw new P.PreprocessError("no ink found: the image looks blank");
    for (let i = 0; i < count; i++) mass.push(0);
    for (let i = 0; i < labels.length; i++) if (labels[i]) mass[labels[i] - 1] += ink[i]; // raster order, doubles
    const heaviest = Math.max(...mass);
    let kept = [];
    for (let i = 0; i < count; i++) if (mass[i] >= SPECK * heaviest) kept.push(i);
    if (kept.length > 4 * MAX_DIGITS) {
      throw new P.PreprocessError(`found ${kept.length} separate marks; a number has at most ${MAX_DIGITS} digits`);
    }
    const tall = (i) => boxes[i][1] - boxes[i][0];
    const wide = (i) => boxes[i][3] - boxes[i][2];
    // A ruled line under or over the number, a frame around it: dropped.
    const lineHeight = median(kept.map(tall));
    const inside = (inner, outer) => outer[0] <= inner[0] && inner[1] <= outer[1] && outer[2] <= inner[2]
      && inner[3] <= outer[3];
    const isLine = (i) => tall(i) < STROKE * lineHeight && wide(i) > 1.5 * lineHeight;
    const isFrame = (i) => kept.filter((j) => j !== i && inside(boxes[j], boxes[i])).length >= 2;
    kept = kept.filter((i) => !isLine(i) && !isFrame(i));
    if (!kept.length) throw new P.PreprocessError("no digits found: only lines or a frame");
    const parent = Array.from({ length: count }, (_, i) => i);
    const find = (i) => {
      while (parent[i] !== i) {
        parent[i] = parent[parent[i]];
        i = parent[i];
      }
      return i;
    };
    const sharedCols = (a, b) => Math.min(boxes[a][3], boxes[b][3]) - Math.max(boxes[a][2], boxes[b][2]);
    for (let ai = 0; ai < kept.length; ai++) {
      for (let bi = ai + 1; bi < kept.length; bi++) {
        const a = kept[ai];
        const b = kept[bi];
        if (sharedCols(a, b) >= OVERLAP * Math.min(wide(a), wide(b))) parent[find(a)] = find(b);
      }
    }
    const digitHeight = median(kept.map(tall));
    const typical = median(kept.map((i) => mass[i]));
    for (const a of kept) {
      const light = mass[a] < LIGHT * typical;
      if (tall(a) >= FRAGMENT * digitHeight && !light) continue;
      let best = null;
      for (const b of kept) {
        if (b === a || !(light ? mass[b] > mass[a] : tall(b) > tall(a))) continue;
        if (best === null || sharedCols(a, b) > sharedCols(a, best)) best = b;
      }
      if (best === null) continue;
      const thin = tall(a) < STROKE * digitHeight || light;
      const shared = sharedCols(a, best);
      if (shared >= 0.25 * wide(a) || (thin && -shared <= STROKE * digitHeight)) parent[find(a)] = find(best);
    }
    const groups = new Map();
    for (const i of kept) {
      const root = find(i);
      if (!groups.has(root)) groups.set(root, []);
      groups.get(root).push(i);
    }
    if (groups.size > MAX_DIGITS) {
      throw new P.PreprocessError(`found ${groups.size} separate digits; \`read\` reads numbers of up to ${MAX_DIGITS}`);
    }
    const pieces = [];
    for (const members of groups.values()) {
      const top = Math.min(...members.map((i) => boxes[i][0]));
      const bottom = Math.max(...members.map((i) => boxes[i][1]));
      const left = Math.min(...members.map((i) => boxes[i][2]));
      const right = Math.max(...members.map((i) => boxes[i][3]));
      const w = right - left;
      const h = bottom - top;
      const ids = new Set(members.map((i) => i + 1));
      const mask = new Uint8Array(w * h);
      for (let y = 0; y < h; y++) {
        for (let x = 0; x < w; x++) if (ids.has(labels[(top + y) * width + left + x])) mask[y * w + x] = 1;
      }
      // With a one-pixel halo (inside the box): the faint antialiased edge of each stroke.
      const piece = new Float32Array(w * h);
      for (let y = 0; y < h; y++) {
        for (let x = 0; x < w; x++) {
          let near = false;
          for (let ny = Math.max(0, y - 1); ny <= Math.min(h - 1, y + 1) && !near; ny++) {
            for (let nx = Math.max(0, x - 1); nx <= Math.min(w - 1, x + 1); nx++) {
              if (mask[ny * w + nx]) {
                near = true;
                break;
              }
            }
          }
          if (near) piece[y * w + x] = ink[(top + y) * width + left + x];
        }
      }
      pieces.push(crop({ ink: piece, w, h, top, left }));
    }
    return pieces.sort((a, b) => (a.left + a.w / 2) - (b.left + b.w / 2));
  }

  // read._split: cut a group of touching digits where the model is surest of both sides.
  function split(piece, height, classify, budget) {
    if (piece.w <= WIDE * height || budget <= 1) return [piece];
    const margin = Math.max(2, Math.trunc(0.25 * height));
    if (piece.w <= 2 * margin) return [piece];
    const projection = new Float32Array(piece.w); // column sums, row after row in fp32 as NumPy's
    for (let y = 0; y < piece.h; y++) {
      for (let x = 0; x < piece.w; x++) projection[x] = Math.fround(projection[x] + piece.ink[y * piece.w + x]);
    }
    const order = [];
    for (let c = margin; c < piece.w - margin; c++) order.push(c);
    order.sort((a, b) => projection[a] - projection[b] || a - b); // a stable argsort
    const candidates = [];
    for (const column of order) {
      if (candidates.every((other) => Math.abs(column - other) >= margin)) candidates.push(column);
      if (candidates.length === CUTS) break;
    }
    const halves = candidates.map((c) => [columns(piece, 0, c), columns(piece, c, piece.w)]);
    const answers = classify([...halves.flat(), piece].map((p) => P.fitToMnist(p.ink, p.w, p.h)));
    const scores = answers.map((a) => a.probability);
    const whole = scores.pop();
    let best = 0;
    for (let k = 1; k < halves.length; k++) {
      if (scores[2 * k] * scores[2 * k + 1] > scores[2 * best] * scores[2 * best + 1]) best = k;
    }
    if (scores[2 * best] * scores[2 * best + 1] <= Math.sqrt(whole)) return [piece];
    const [left, right] = halves[best];
    const half = Math.floor(budget / 2);
    return [...split(left, height, classify, half), ...split(right, height, classify, budget - half)];
  }

  // read.read_number of RGBA pixels: {number, digits: [{box, digit, probability, image}]},
  // box in the picture's own pixels. `classify` takes 28x28 byte pictures and answers
  // [{digit, probability}] for each; throws PreprocessError when there is nothing to read.
  function readNumber(image, classify, draft = 1, white = false) {
    const { ink, width, height, factor } = P.inkOf(image, draft, white);
    const groups = digitGroups(ink, width, height);
    const digitHeight = median(groups.map((g) => g.h));
    const pieces = groups.flatMap((group) => split(group, digitHeight, classify, MAX_DIGITS));
    if (pieces.length > MAX_DIGITS) {
      throw new P.PreprocessError(`found ${pieces.length} digits; \`read\` reads numbers of up to ${MAX_DIGITS}`);
    }
    pieces.sort((a, b) => (a.left + a.w / 2) - (b.left + b.w / 2));
    const images = pieces.map((p) => P.fitToMnist(p.ink, p.w, p.h));
    const answers = classify(images);
    const digits = pieces.map((p, i) => {
      const x = p.left * factor;
      const y = p.top * factor;
      return {
        box: { x, y, width: Math.min(p.w * factor, image.width - x), height: Math.min(p.h * factor, image.height - y) },
        digit: answers[i].digit, probability: answers[i].probability, image: images[i],
      };
    });
    return { number: digits.map((d) => String(d.digit)).join(""), digits };
  }

  // --------------------------------------------------------- the number reader

  const STRIP_HEIGHT = 32;
  const INK_HEIGHT = 24;
  const PAD = 4;
  const MAX_ASPECT = 1.6 * MAX_DIGITS;
  const BLANK = 10;
  // What strips.batch_strips pads with: computed in doubles, then stored as fp32 (a strip's
  // own blank pixels are normalized in fp32: they may differ in the last bit).
  const BLANK_PIXEL = Math.fround((0 - E.MEAN) / E.STD);
  const STRONG = Math.fround(0.2); // NumPy compares fp32 ink with 0.2 in fp32

  // strips.ink_strip: {pixels (normalized fp32, STRIP_HEIGHT x width, row-major), width, and
  // where it came from}: strip column x shows column (x - PAD) / scale of the cleaned ink
  // (inkW x inkH), whose corner is (left, top) in the ink map, the picture reduced by factor.
  function inkStrip(ink, width, height, factor = 1) {
    const clean = new Float32Array(width * height); // the digits' ink alone, on a blank map
    for (const piece of digitGroups(ink, width, height)) {
      for (let y = 0; y < piece.h; y++) {
        for (let x = 0; x < piece.w; x++) {
          const at = (piece.top + y) * width + piece.left + x;
          clean[at] = Math.max(clean[at], piece.ink[y * piece.w + x]);
        }
      }
    }
    const tight = P.cropToInk(clean, width, height); // never null: digitGroups throws first
    const { w, h } = tight;
    if (w > MAX_ASPECT * Math.max(h, 8)) {
      throw new P.PreprocessError(`the ink is ${(w / h).toFixed(0)} times wider than tall: more than a number `
        + `of up to ${MAX_DIGITS} digits`);
    }
    const scale = INK_HEIGHT / Math.max(h, 8); // a flat mark (a minus, a dot) is not blown up
    const outH = Math.max(1, P.roundHalfEven(h * scale));
    const outW = Math.max(1, P.roundHalfEven(w * scale));
    const small = P.resize(tight.data, w, h, outW, outH, "bilinear");
    const stripW = outW + 2 * PAD;
    const pixels = new Float32Array(STRIP_HEIGHT * stripW).fill(E.normalize(0));
    const y0 = Math.floor((STRIP_HEIGHT - outH) / 2);
    for (let y = 0; y < outH; y++) {
      for (let x = 0; x < outW; x++) {
        pixels[(y0 + y) * stripW + PAD + x] = E.normalize(Math.min(1, Math.max(0, small[y * outW + x])));
      }
    }
    return { pixels, width: stripW, ink: tight.data, inkW: w, inkH: h, left: tight.left, top: tight.top, scale,
      factor };
  }

  // sequence.run_reader for one strip: padded on the right to a whole number of output
  // columns (strips.COLUMN pixels each: the model's stride) as batch_strips does, then the
  // reader: {logProbs (11 x columns), columns}.
  function readerOutput(model, strip) {
    const column = model.stride[1];
    const width = strip.width + ((column - (strip.width % column)) % column);
    const padded = new Float32Array(STRIP_HEIGHT * width).fill(BLANK_PIXEL);
    for (let y = 0; y < STRIP_HEIGHT; y++) {
      padded.set(strip.pixels.subarray(y * strip.width, (y + 1) * strip.width), y * width);
    }
    return E.runStrip(model, padded, STRIP_HEIGHT, width);
  }

  // The log-probabilities of the 10 digits in column t.
  function digitScores(logProbs, columns, t) {
    return Array.from({ length: BLANK }, (_, k) => logProbs[k * columns + t]);
  }

  // sequence.greedy_decode: the best class per column, runs merged, blanks dropped; a digit's
  // probability is its run's best column's, its scores that column's digitScores.
  function greedyDecode({ logProbs, columns }) {
    const spans = [];
    let previous = BLANK;
    for (let t = 0; t < columns; t++) {
      let best = 0;
      for (let k = 1; k <= BLANK; k++) if (logProbs[k * columns + t] > logProbs[best * columns + t]) best = k;
      const value = logProbs[best * columns + t];
      if (best !== BLANK && best === previous) {
        const last = spans[spans.length - 1];
        if (value > last.surest) { // by log-probability, as Python
          last.surest = value;
          last.probability = Math.exp(value);
          last.scores = digitScores(logProbs, columns, t);
        }
        last.last = t;
      } else if (best !== BLANK) {
        spans.push({ digit: best, probability: Math.exp(value), surest: value, first: t, last: t,
          scores: digitScores(logProbs, columns, t) });
      }
      previous = best;
    }
    return spans;
  }

  // sequence.digit_boxes: each digit's box in the picture's pixels, the ink columns between
  // the midpoints to its neighbours' centres, cropped to the ink there; that ink framed as
  // MNIST (read._framed: blank where there is none); and whether it stands alone (no stroke
  // crosses the box's left or right edge).
  function digitBoxes(strip, spans, column) {
    const { ink, inkW: width, inkH: height, scale, left, top, factor: f } = strip;
    // Each span's centre, in columns of the strip's ink.
    const centres = spans.map((span) => (((span.first + span.last + 1) / 2) * column - PAD) / scale);
    const edges = [0, ...centres.slice(1).map((c, i) => P.roundHalfEven((centres[i] + c) / 2)), width];
    const strokeColumns = strokes(ink, width, height).boxes.map((box) => [box[2], box[3]]);
    return spans.map((_, index) => {
      const a = Math.min(Math.max(edges[index], 0), width - 1);
      const b = Math.min(Math.max(edges[index + 1], a + 1), width);
      const alone = strokeColumns.every(([start, stop]) => !(start < b && stop > a) || (a <= start && stop <= b));
      let rows = [];
      let cols = [];
      const columnMax = new Float32Array(b - a).fill(-Infinity);
      for (let y = 0; y < height; y++) {
        let rowMax = -Infinity;
        for (let x = a; x < b; x++) {
          const v = ink[y * width + x];
          rowMax = Math.max(rowMax, v);
          columnMax[x - a] = Math.max(columnMax[x - a], v);
        }
        if (rowMax > STRONG) rows.push(y);
      }
      columnMax.forEach((v, x) => v > STRONG && cols.push(x));
      if (!rows.length || !cols.length) { // no ink there: the whole slice
        rows = [0, height - 1];
        cols = [0, b - a - 1];
      }
      const [first, last] = [cols[0], cols[cols.length - 1]];
      const [upper, lower] = [rows[0], rows[rows.length - 1]];
      const w = last - first + 1;
      const h = lower - upper + 1;
      const piece = new Float32Array(w * h);
      for (let y = 0; y < h; y++) {
        piece.set(ink.subarray((upper + y) * width + a + first, (upper + y) * width + a + first + w), y * w);
      }
      let framed;
      try {
        framed = P.fitToMnist(piece, w, h);
      } catch (error) {
        if (!(error instanceof P.PreprocessError)) throw error;
        framed = new Uint8Array(28 * 28);
      }
      return { box: { x: (left + a + first) * f, y: (top + upper) * f, width: w * f, height: h * f }, framed,
        alone };
    });
  }

  const logSumExp = (values) => {
    const top = Math.max(...values);
    return top + Math.log(values.reduce((sum, v) => sum + Math.exp(v - top), 0));
  };

  // read._read_sequence's probabilities of the 10 digits in a span: P(a digit in its surest
  // column) x P(which digit), the second the reader's scores plus DIGIT_WEIGHT times the digit
  // model's log-probabilities, TOUCHING_SHARE of that where a stroke crosses the digit's box,
  // as where digits touch (no digit model: the reader's alone).
  const DIGIT_WEIGHT = 0.75;
  const TOUCHING_SHARE = 0.4;
  function combined(scores, { framed, alone }, digitModel) {
    const aDigit = Math.min(logSumExp(scores), 0); // float32 sums can pass 1
    const weight = DIGIT_WEIGHT * (alone ? 1 : TOUCHING_SHARE);
    const which = digitModel ? Array.from(E.run(digitModel, framed), (v, k) => scores[k] + weight * v)
      : scores;
    const norm = logSumExp(which);
    return which.map((v) => Math.exp(aDigit + v - norm));
  }

  // The number in an ink map (width x height, `factor` picture pixels per ink-map pixel) read
  // by a reader model (engine.js), each digit read again by `digitModel` (a digit model, or
  // null): {number, digits: [{box, digit, probability}], milliseconds: {strip, reader (both
  // models)}}, box in the picture's pixels; throws PreprocessError when there is nothing to read.
  function readInk(ink, width, height, factor, model, digitModel = null) {
    const started = performance.now();
    const strip = inkStrip(ink, width, height, factor);
    const stripped = performance.now();
    const spans = greedyDecode(readerOutput(model, strip));
    if (!spans.length) throw new P.PreprocessError("no digits found: the reader sees ink but reads no digit in it");
    if (spans.length > MAX_DIGITS) {
      throw new P.PreprocessError(`found ${spans.length} digits; \`read\` reads numbers of up to ${MAX_DIGITS}`);
    }
    const boxes = digitBoxes(strip, spans, model.stride[1]);
    const digits = spans.map((span, i) => {
      const probabilities = combined(span.scores, boxes[i], digitModel);
      const digit = probabilities.indexOf(Math.max(...probabilities));
      return { box: boxes[i].box, digit, probability: probabilities[digit] };
    });
    return { number: digits.map((d) => String(d.digit)).join(""), digits,
      milliseconds: { strip: stripped - started, reader: performance.now() - stripped } };
  }

  // read.read_number(method="sequence") of RGBA pixels: readInk's answer, milliseconds.ink
  // added (the ink map: the picture reduced, its paper fitted and removed).
  function readWithReader(image, model, white = false, digitModel = null) {
    const started = performance.now();
    const { ink, width, height, factor } = P.inkOf(image, 1, white);
    const inked = performance.now() - started;
    const reading = readInk(ink, width, height, factor, model, digitModel);
    // Boxes span whole ink-map pixels, which can reach past the edge of the picture.
    for (const { box } of reading.digits) {
      box.width = Math.min(box.width, image.width - box.x);
      box.height = Math.min(box.height, image.height - box.y);
    }
    return { ...reading, milliseconds: { ink: inked, ...reading.milliseconds } };
  }

  return { readNumber, readWithReader, readInk, digitGroups, inkStrip, readerOutput };
})();
