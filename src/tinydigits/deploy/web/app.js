// The tinydigits web demo: a drawing pad (Pointer Events: mouse, pen and touch) read as you
// draw; the answers are shown as a digit, ten probability bars and the 28x28 image the model
// saw. Inference runs on the server (/api/predict; in "A number" mode the pad is wide and the
// picture goes to /api/read, once, read by the server's number reader: the number, a box and
// a bar per digit) or in the browser (engine.js runs the models, preprocess.js and read.js are
// ports of the server's preprocessing and number reading), as models.json offers: `tinydigits
// serve` offers the server (and the browser with --in-browser), a static export the browser
// only; there a service worker keeps the page working offline. No libraries, nothing fetched
// from anywhere but the page's own origin.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const pad = $("pad");
  // Read back on every in-browser prediction: a CPU-backed canvas makes that cheap.
  const ctx = pad.getContext("2d", { willReadFrequently: true });
  // Stroke width on the 280-px pad: a digit drawn about 200 px tall is scaled into
  // MNIST's 20-px box, where this becomes about MNIST's own 2-px stroke.
  const LINE_WIDTH = 18;
  const THROTTLE_MS = 120; // at most one request per model this often while drawing
  const ALL = "all";
  // A static site's script carries the files its first read needs (models.json and the
  // default model's weights; static_site.py), so the page can read as soon as it has run,
  // before a fetch or a first render; the page `tinydigits serve` sends fetches them.
  const firstRead = window.tinydigitsFirstRead || {};

  function getJson(path) {
    if (Object.hasOwn(firstRead, path)) return Promise.resolve(firstRead[path]);
    return fetch(path).then((response) => {
      if (!response.ok) throw new Error(`cannot load ${path} (HTTP ${response.status})`);
      return response.json();
    });
  }

  const state = {
    strokes: [], // each a list of [x, y] points in canvas pixels
    drawing: null, // {id, points} while a pointer is down
    photo: null, // the uploaded File, when a photo is the input instead of the drawing
    photoUrl: null,
    photoPixels: null, // its decoded pixels, for the browser (a promise)
    models: [], // the digit models, from models.json
    reader: null, // the number reader's info from models.json (null: none offered)
    inference: "server", // or "browser"
    offered: [], // what models.json offers: "server" and/or "browser"
    choice: null, // a model name or ALL
    defaultModel: null, // the digit model that reads again each digit the number reader finds
    inflight: false,
    dirty: false, // the input changed since the last request was sent
    timer: null,
    lastSent: 0,
    epoch: 0, // bumped on Clear/upload/model change so late answers are dropped
    mode: "digit", // or "number"
  };

  // ------------------------------------------------------------------ drawing

  function resetCanvas() {
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, pad.width, pad.height);
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.lineWidth = LINE_WIDTH;
    ctx.strokeStyle = "#111";
    ctx.fillStyle = "#111";
  }

  function segment(from, to) {
    ctx.beginPath();
    ctx.moveTo(from[0], from[1]);
    ctx.lineTo(to[0], to[1]);
    ctx.stroke();
  }

  function dot(p) {
    ctx.beginPath();
    ctx.arc(p[0], p[1], LINE_WIDTH / 2, 0, 2 * Math.PI);
    ctx.fill();
  }

  function redraw() {
    resetCanvas();
    for (const points of state.strokes) {
      dot(points[0]);
      for (let i = 1; i < points.length; i++) segment(points[i - 1], points[i]);
    }
  }

  // Pointer position in canvas pixels, whatever size CSS gives the canvas.
  function canvasPoint(event) {
    const box = pad.getBoundingClientRect();
    return [(event.clientX - box.left) * (pad.width / box.width),
      (event.clientY - box.top) * (pad.height / box.height)];
  }

  pad.addEventListener("pointerdown", (event) => {
    if (state.drawing || (event.pointerType === "mouse" && event.button !== 0)) return;
    event.preventDefault();
    pad.setPointerCapture(event.pointerId); // keep the stroke when the pointer leaves the pad
    if (state.photo) clearPhoto();
    const start = canvasPoint(event);
    state.drawing = { id: event.pointerId, points: [start] };
    state.strokes.push(state.drawing.points);
    dot(start);
    inputChanged(false);
  });

  pad.addEventListener("pointermove", (event) => {
    const drawing = state.drawing;
    if (!drawing || event.pointerId !== drawing.id) return;
    event.preventDefault();
    // Coalesced events keep fast pen strokes smooth where the browser batches them.
    const batch = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
    for (const e of batch.length ? batch : [event]) {
      const p = canvasPoint(e);
      segment(drawing.points[drawing.points.length - 1], p);
      drawing.points.push(p);
    }
    inputChanged(false);
  });

  function endStroke(event) {
    if (!state.drawing || event.pointerId !== state.drawing.id) return;
    state.drawing = null;
    inputChanged(true);
  }
  pad.addEventListener("pointerup", endStroke);
  pad.addEventListener("pointercancel", endStroke);
  pad.addEventListener("lostpointercapture", endStroke);

  function undo() {
    if (state.photo) {
      clearPhoto();
    } else {
      if (state.drawing) return;
      state.strokes.pop();
      redraw();
    }
    state.epoch++;
    inputChanged(true);
  }

  function clearAll() {
    state.strokes = [];
    state.drawing = null;
    clearPhoto();
    redraw();
    state.epoch++;
    inputChanged(true);
  }

  $("undo").addEventListener("click", undo);
  $("clear").addEventListener("click", clearAll);
  document.addEventListener("keydown", (event) => {
    if ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "z") {
      event.preventDefault();
      undo();
    } else if (event.key === "Escape") {
      clearAll();
    }
  });

  // ------------------------------------------------------------------- photos

  function clearPhoto() {
    if (state.photoUrl) URL.revokeObjectURL(state.photoUrl);
    state.photo = null;
    state.photoUrl = null;
    state.photoPixels = null;
    $("photo").hidden = true;
    $("photo").removeAttribute("src");
  }

  function photoChosen(event) {
    const file = event.target.files[0];
    event.target.value = ""; // choosing the same file again is a change too
    if (!file) return;
    clearPhoto();
    state.strokes = [];
    redraw();
    state.photo = file;
    state.photoUrl = URL.createObjectURL(file); // a local preview; the file itself is sent
    $("photo").src = state.photoUrl;
    $("photo").hidden = false;
    state.epoch++;
    inputChanged(true);
  }
  $("file").addEventListener("change", photoChosen);
  $("camera").addEventListener("change", photoChosen);

  // -------------------------------------------------------------- predictions

  function hasInput() {
    return state.photo !== null || state.strokes.length > 0;
  }

  function setBusy() {
    const busy = state.inflight || state.dirty || state.timer !== null;
    document.body.dataset.busy = String(busy);
  }

  // Called on every change of the input: ask for a prediction, at most one request
  // round in flight and one every THROTTLE_MS while drawing; `now` skips the wait.
  function inputChanged(now) {
    $("hint").hidden = hasInput();
    $("boxes").replaceChildren(); // they belonged to the previous picture
    if (!hasInput()) {
      state.dirty = false;
      if (state.timer !== null) clearTimeout(state.timer);
      state.timer = null;
      showEmpty();
      setBusy();
      return;
    }
    state.dirty = true;
    if (!state.inflight) {
      const wait = now ? 0 : Math.max(0, state.lastSent + THROTTLE_MS - performance.now());
      if (state.timer !== null) clearTimeout(state.timer);
      state.timer = setTimeout(send, wait);
    }
    setBusy();
  }

  function selectedModels() {
    return state.choice === ALL ? state.models.map((m) => m.name) : [state.choice];
  }

  // Whether "A number" is read by the number reader, in one reading: always on the server
  // (its /api/read reads with its default, the reader), in the browser when models.json ships
  // the reader's weights. Otherwise (a served page offering the browser without them) the
  // browser reads with the segmenter and each chosen digit model (read.js).
  function readerReads() {
    return state.mode === "number" && (state.inference === "server" || Boolean(state.reader?.weights));
  }

  // The models answering, one card each: the number reader alone, or the chosen digit models.
  // A server's reader not named in models.json is "reader" until its answer names it.
  function answering() {
    return readerReads() ? [state.reader ? state.reader.name : "reader"] : selectedModels();
  }

  function infoOf(name) {
    return state.reader && state.reader.name === name ? state.reader : state.models.find((m) => m.name === name);
  }

  // The request body: the photo as multipart, the drawing as a JSON data URL (the two forms
  // the API takes); `model` left out asks for the server's default.
  function requestFor(model) {
    if (state.photo) {
      const form = new FormData();
      form.append("image", state.photo, state.photo.name || "photo");
      if (model) form.append("model", model);
      return { method: "POST", body: form };
    }
    return {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ image: pad.toDataURL("image/png"), ...(model ? { model } : {}) }),
    };
  }

  async function predictWith(model) {
    const endpoint = state.mode === "number" ? "api/read" : "api/predict";
    const response = await fetch(endpoint, requestFor(model));
    let answer;
    try {
      answer = await response.json();
    } catch {
      answer = { error: `the server answered HTTP ${response.status}` };
    }
    if (!response.ok) {
      const error = new Error(answer.error || `HTTP ${response.status}`);
      error.status = response.status;
      throw error;
    }
    return answer;
  }

  async function send() {
    state.timer = null;
    if (!state.dirty || state.inflight) return setBusy();
    state.dirty = false;
    state.inflight = true;
    state.lastSent = performance.now();
    setBusy();
    const epoch = state.epoch;
    try {
      if (!hasInput()) return;
      let answers;
      if (state.inference === "browser") answers = await inBrowser.predict(answering());
      else if (readerReads()) answers = [await predictWith(null)];
      else answers = await Promise.all(selectedModels().map(predictWith));
      if (epoch === state.epoch) showAnswers(answers);
    } catch (error) {
      if (epoch === state.epoch) showError(error);
    } finally {
      state.inflight = false;
      if (state.dirty) inputChanged(false);
      setBusy();
    }
  }

  // ------------------------------------------------------------------- output

  function percent(p) {
    return `${(p * 100).toFixed(1)}%`;
  }

  // A card's title and its model's size and accuracy.
  function describe(card, name) {
    const info = infoOf(name);
    card.dataset.model = name;
    card.querySelector(".title").textContent = info ? shortTitle(info) : name;
    if (info) {
      const of = info === state.reader ? "of test numbers read exactly" : "on MNIST test";
      const accuracy = info.test_accuracy ? `, ${info.test_accuracy}% ${of}` : "";
      card.querySelector(".params").textContent = `${info.parameters.toLocaleString("en")} parameters${accuracy}`;
    }
  }

  function buildCards() {
    const results = $("results");
    results.replaceChildren();
    const names = answering();
    results.classList.toggle("several", names.length > 1);
    // The picker is hidden: the default digit model, whatever is picked, reads each digit again.
    $("models").hidden = readerReads();
    for (const name of names) {
      const card = $("card").content.firstElementChild.cloneNode(true);
      describe(card, name);
      const bars = card.querySelector(".bars");
      for (let digit = 0; digit < 10; digit++) {
        const row = document.createElement("li");
        row.dataset.digit = String(digit);
        row.dataset.p = "0";
        row.innerHTML = '<span class="label"></span><span class="track"><span class="fill"></span></span>' +
          '<span class="pct"></span>';
        row.querySelector(".label").textContent = String(digit);
        bars.append(row);
      }
      results.append(card);
    }
  }

  function showEmpty() {
    state.epoch++;
    buildCards();
    $("boxes").replaceChildren();
    $("seen").hidden = true;
    $("seen-empty").hidden = false;
    const what = state.mode === "number" ? "Write a number" : "Draw a digit";
    const photo = ", or upload a photo of one.";
    showMessage(state.models.length ? `${what}${photo}` : "");
  }

  function showMessage(text, isError = false) {
    const message = $("message");
    message.textContent = text;
    message.classList.toggle("error", isError);
  }

  function showError(error) {
    buildCards();
    $("boxes").replaceChildren();
    $("seen").hidden = true;
    $("seen-empty").hidden = false;
    // 422: the picture has no ink (an empty-looking drawing); not worth alarming anyone.
    const nothing = state.mode === "number" ? "Nothing to read" : "No digit found";
    showMessage(error.status === 422 ? `${nothing}: ${error.message}` : `Error: ${error.message}`,
      error.status !== 422);
  }

  function showAnswers(answers) {
    if (state.mode === "number") return showReadings(answers);
    for (const answer of answers) {
      const card = document.querySelector(`#results .card[data-model="${answer.model}"]`);
      if (!card) continue;
      card.querySelector(".digit").textContent = String(answer.digit);
      card.querySelector(".confidence").textContent = `${percent(answer.probability)} sure`;
      card.querySelectorAll(".bars li").forEach((row, digit) => {
        const p = answer.probabilities[digit];
        row.dataset.p = String(p);
        row.classList.toggle("top", digit === answer.digit);
        row.querySelector(".fill").style.width = `${(p * 100).toFixed(2)}%`;
        row.querySelector(".pct").textContent = percent(p);
        row.title = `${digit}: ${(p * 100).toFixed(3)}%`;
      });
      card.querySelector(".time").textContent = answer.where === "browser"
        ? `${answer.milliseconds.toFixed(1)} ms in your browser, ` +
          `${answer.inference_milliseconds.toFixed(2)} ms of it in the model`
        : `${answer.milliseconds.toFixed(1)} ms on the server, ` +
          `${answer.inference_milliseconds.toFixed(2)} ms of it in the model`;
    }
    $("seen").src = answers[0].image;
    $("seen").hidden = false;
    $("seen-empty").hidden = true;
    showMessage(readingMessage("your drawing"));
  }

  function readingMessage(drawing, what = "") {
    const source = state.photo ? `your photo (${state.photo.name})` : drawing;
    if (state.inference !== "browser") return `Reading ${source}${what}.`;
    return state.photo
      ? `Reading ${source}${what} in your browser: the photo never leaves this machine.`
      : `Reading ${source}${what} in your browser: nothing you draw leaves this machine.`;
  }

  // The answers of /api/read: per model the number and a bar per digit; the first model's
  // boxes drawn over the pad (their coordinates are the drawing's own pixels).
  function showReadings(answers) {
    const cards = document.querySelectorAll("#results .card");
    for (const answer of answers) {
      let card = document.querySelector(`#results .card[data-model="${answer.model}"]`);
      if (!card && cards.length === 1 && readerReads()) { // the server named its reader
        card = cards[0];
        describe(card, answer.model);
      }
      if (!card) continue;
      card.querySelector(".digit").textContent = answer.number;
      card.querySelector(".confidence").textContent =
        `${answer.digits.length} digit${answer.digits.length === 1 ? "" : "s"}`;
      const rows = answer.digits.map((d) => {
        const row = document.createElement("li");
        row.dataset.digit = String(d.digit);
        row.dataset.p = String(d.probability);
        row.innerHTML = '<span class="label"></span><span class="track"><span class="fill"></span></span>' +
          '<span class="pct"></span>';
        row.querySelector(".label").textContent = String(d.digit);
        row.querySelector(".fill").style.width = `${(d.probability * 100).toFixed(2)}%`;
        row.querySelector(".pct").textContent = percent(d.probability);
        return row;
      });
      card.querySelector(".number-digits").replaceChildren(...rows);
      const inModel = answer.inference_milliseconds === undefined ? ""
        : `, ${answer.inference_milliseconds.toFixed(1)} ms of it in the model`;
      card.querySelector(".time").textContent = answer.where === "browser"
        ? `${answer.milliseconds.toFixed(1)} ms in your browser${inModel}`
        : `${answer.milliseconds.toFixed(1)} ms on the server`;
    }
    const boxes = state.photo ? [] : answers[0].digits.map((d) => {
      const box = document.createElement("div");
      box.className = "box";
      box.style.left = `${(100 * d.box.x) / pad.width}%`;
      box.style.top = `${(100 * d.box.y) / pad.height}%`;
      box.style.width = `${(100 * d.box.width) / pad.width}%`;
      box.style.height = `${(100 * d.box.height) / pad.height}%`;
      const label = document.createElement("span");
      label.textContent = String(d.digit);
      box.append(label);
      return box;
    });
    $("boxes").replaceChildren(...boxes);
    showMessage(readingMessage("your writing", " as a number"));
  }

  // ---------------------------------------------------------- in the browser

  // The models run by engine.js from their weights (models/<name>.json, fetched once each);
  // pictures prepared by preprocess.js (one digit) or read.js (a number), as the server does.
  // Answers have the API's shape.
  const inBrowser = {
    models: new Map(),

    model(name) {
      if (!this.models.has(name)) {
        const info = infoOf(name);
        const loading = getJson(info.weights).then((document) => window.tinydigitsEngine.load(document));
        loading.catch(() => this.models.delete(name)); // tried again next time
        this.models.set(name, loading);
      }
      return this.models.get(name);
    },

    // The photo's pixels, upright per EXIF, as Pillow decodes them (no colour management, alpha
    // not premultiplied), the JPEG draft scale (1, 2, 4 or 8) they still need reducing by, and
    // the decoder that gave them. With `draft`, a large JPEG is decoded at 1/2-1/8 scale as
    // Python's JPEG draft mode does: ImageDecoder asks the browser's libjpeg for the same
    // scaled decode (in Chromium the very same pixels, in a few ms where a whole decode of a
    // phone photo and its box average took 100+); elsewhere the page box-averages a whole one.
    async photoPixels(file, draft) {
      const P = window.tinydigitsPreprocess;
      const head = await bytesOf(file.slice(0, 262144)); // markers, EXIF, colour profile: the header
      const header = P.jpegHeader(head);
      if (header) checkPixels(header.width, header.height); // before decoding, where a header says
      const scale = header && draft ? P.draftScale(header.width, header.height) : 1;
      if (scale > 1 && typeof ImageDecoder === "function") {
        const image = await draftDecoded(await bytesOf(file), header, scale);
        if (image) return { image, draft: 1, decoder: "ImageDecoder" };
      }
      let bitmap;
      try {
        bitmap = await createImageBitmap(file, { imageOrientation: "from-image", premultiplyAlpha: "none",
          colorSpaceConversion: "none" });
      } catch {
        throw badInput("not an image, or not a format this browser decodes");
      }
      try {
        const { width, height } = bitmap;
        checkPixels(width, height);
        const jpeg = head[0] === 0xff && head[1] === 0xd8 && head[2] === 0xff;
        return { image: pixelsOf(bitmap, width, height), draft: jpeg && draft ? P.draftScale(width, height) : 1,
          decoder: "whole" };
      } finally {
        bitmap.close();
      }
    },

    async predict(names) {
      const models = await Promise.all(names.map((name) => this.model(name)));
      const byReader = readerReads(); // once: the mode may change while the models load
      // The default digit model reads again each digit the number reader finds (read.js).
      const digitModel = byReader ? await this.model(state.defaultModel) : null;
      const started = performance.now();
      let image;
      let draft = 1;
      let decoded = 0;
      let decoder = null;
      const white = !state.photo; // the pad's own paper
      if (state.photo) {
        // Python decodes a JPEG at 1/2-1/8 scale when it is read as one digit (to_mnist).
        state.photoPixels ??= this.photoPixels(state.photo, state.mode === "digit");
        const photo = await state.photoPixels;
        decoded = performance.now() - started;
        image = photo.image;
        draft = photo.draft;
        decoder = photo.decoder;
      } else {
        image = ctx.getImageData(0, 0, pad.width, pad.height);
      }
      const where = "browser";
      const prepStart = performance.now();
      if (byReader) { // one reading, by the number reader
        const reading = window.tinydigitsRead.readWithReader(image, models[0], white, digitModel);
        const { ink, strip, reader } = reading.milliseconds;
        const milliseconds = decoded + ink + strip + reader;
        record({ decode: decoded, prepare: ink + strip, inference: reader, total: milliseconds });
        return [{ model: names[0], number: reading.number, digits: reading.digits, where, milliseconds,
          inference_milliseconds: reader }];
      }
      if (state.mode === "number") { // the segmenter, with each digit model
        return names.map((name, k) => {
          const t0 = performance.now();
          const reading = window.tinydigitsRead.readNumber(image, (images) => classifyAll(models[k], images), 1, white);
          const milliseconds = performance.now() - t0 + (k === 0 ? decoded : 0);
          record({ decode: decoded, total: milliseconds });
          return { model: name, number: reading.number, where, milliseconds,
            digits: reading.digits.map((d) => ({ box: d.box, digit: d.digit, probability: d.probability })) };
        });
      }
      const digit = window.tinydigitsPreprocess.toMnist(image, draft, white);
      const prepared = performance.now() - prepStart;
      const seen = seenDataUrl(digit);
      return names.map((name, k) => {
        const t0 = performance.now();
        const logProbabilities = window.tinydigitsEngine.run(models[k], digit);
        const inference = performance.now() - t0;
        const probabilities = Array.from(logProbabilities, Math.exp);
        const best = probabilities.indexOf(Math.max(...probabilities));
        record({ decode: decoded, prepare: prepared, inference, total: decoded + prepared + inference, decoder });
        return {
          model: name, digit: best, probability: probabilities[best], probabilities, image: seen, where,
          milliseconds: decoded + prepared + inference, inference_milliseconds: inference,
        };
      });
    },
  };

  function badInput(message) {
    const error = new Error(message);
    error.status = 400;
    return error;
  }

  function checkPixels(width, height) {
    if (width * height > 40000000) throw badInput(`image too large: ${width}x${height}, the limit is 40 megapixels`);
  }

  async function bytesOf(blob) {
    try {
      return new Uint8Array(await blob.arrayBuffer());
    } catch {
      throw badInput("cannot read the file");
    }
  }

  // A picture's RGBA pixels (an ImageBitmap, or a VideoFrame drawn upright).
  function pixelsOf(picture, width, height) {
    const canvas = document.createElement("canvas");
    canvas.width = width;
    canvas.height = height;
    const context = canvas.getContext("2d", { willReadFrequently: true });
    context.drawImage(picture, 0, 0);
    return context.getImageData(0, 0, width, height);
  }

  // EXIF orientations without a mirror image, and the rotation a decoded frame then carries.
  const ROTATION = { 1: 0, 3: 180, 6: 90, 8: 270 };

  // A JPEG decoded at 1/scale by the browser's decoder, upright; null where the browser cannot,
  // or gives another size than libjpeg's, or may not turn it upright (a mirrored orientation,
  // a frame without its rotation): then the page decodes it whole.
  async function draftDecoded(bytes, header, scale) {
    const rotation = ROTATION[header.orientation];
    if (rotation === undefined) return null;
    let decoder;
    let frame;
    try {
      const width = Math.ceil(header.width / scale);
      const height = Math.ceil(header.height / scale);
      decoder = new ImageDecoder({ data: bytes, type: "image/jpeg", desiredWidth: width, desiredHeight: height,
        colorSpaceConversion: "none" });
      frame = (await decoder.decode()).image;
      if ((frame.rotation ?? 0) !== rotation || frame.flip) return null;
      const turned = rotation % 180 !== 0;
      const { displayWidth: w, displayHeight: h } = frame;
      return w === (turned ? height : width) && h === (turned ? width : height) ? pixelsOf(frame, w, h) : null;
    } catch (error) {
      if (error instanceof DOMException || error instanceof TypeError) return null; // not decoded here
      throw error;
    } finally {
      frame?.close();
      decoder?.close();
    }
  }

  function classifyAll(model, images) {
    return images.map((image) => {
      const log = window.tinydigitsEngine.run(model, image);
      let best = 0;
      for (let d = 1; d < 10; d++) if (log[d] > log[best]) best = d;
      return { digit: best, probability: Math.exp(log[best]) };
    });
  }

  // The last in-browser answer's times (ms), for the tests' measurements.
  function record(times) {
    window.tinydigitsTimes = times;
  }

  // The 28x28 bytes as a PNG data URL, for "what the model saw".
  function seenDataUrl(digit) {
    const canvas = document.createElement("canvas");
    canvas.width = canvas.height = 28;
    const context = canvas.getContext("2d");
    const image = context.createImageData(28, 28);
    digit.forEach((v, i) => image.data.set([v, v, v, 255], 4 * i));
    context.putImageData(image, 0, 0);
    return canvas.toDataURL("image/png");
  }

  function inferenceChosen(where) {
    state.inference = where;
    document.body.dataset.inference = where;
    const radio = document.querySelector(`#inference input[value="${where}"]`);
    if (radio) radio.checked = true;
    if (where === "browser") {
      // The chosen models are fetched now, not at the first stroke: the mark times the page's
      // first load, a digit can be read from then on. The other digit models and the number
      // reader (four times their weight) follow in the background, and the service worker
      // after them; whatever is asked for before it has arrived is waited for.
      const withWeights = state.models.filter((m) => m.weights).map((m) => m.name);
      const chosen = selectedModels().filter((name) => withWeights.includes(name));
      const rest = [...withWeights.filter((name) => !chosen.includes(name)),
        ...(state.reader?.weights ? [state.reader.name] : [])];
      Promise.all(chosen.map((name) => inBrowser.model(name)))
        .then(() => {
          performance.mark("tinydigits-models-ready");
          document.body.dataset.modelsReady = "true";
          return Promise.all(rest.map((name) => inBrowser.model(name)));
        })
        .then(() => {
          performance.mark("tinydigits-reader-ready");
          document.body.dataset.readerReady = "true";
          if (!state.offered.includes("server")) offline();
        })
        .catch((error) => showMessage(`Error: ${error.message}`, true));
    }
    state.epoch++;
    buildCards();
    if (hasInput()) inputChanged(true);
    else showEmpty();
  }

  for (const input of document.querySelectorAll('#inference input[name="inference"]')) {
    input.addEventListener("change", () => inferenceChosen(input.value));
  }

  // --------------------------------------------------------------------- mode

  // One digit on a square pad, or a number on a pad twice as wide; each starts empty.
  function modeChosen(mode) {
    state.mode = mode;
    state.strokes = []; // a new pad: strokes beyond a square one would be invisible yet read
    clearPhoto();
    document.body.dataset.mode = mode;
    pad.width = mode === "number" ? 560 : 280;
    pad.setAttribute("aria-label", mode === "number"
      ? "Drawing area: write a number with the mouse, a pen or a finger"
      : "Drawing area: draw one digit with the mouse, a pen or a finger");
    $("hint").textContent = mode === "number" ? "write a number here" : "draw a digit here";
    redraw();
    state.epoch++;
    buildCards();
    inputChanged(true);
  }

  for (const input of document.querySelectorAll('#mode input[name="mode"]')) {
    input.addEventListener("change", () => modeChosen(input.value));
  }

  // ------------------------------------------------------------------- models

  function shortTitle(info) {
    return info.title.replace(/^MNIST-/, "");
  }

  function modelChosen(choice) {
    state.choice = choice;
    state.epoch++;
    buildCards();
    if (hasInput()) inputChanged(true);
  }

  function buildPicker(models, defaultName) {
    const picker = $("models");
    const options = models.map((m) => [m.name, shortTitle(m)]);
    if (models.length > 1) options.push([ALL, models.length === 3 ? "All three" : `All ${models.length}`]);
    for (const [value, text] of options) {
      const label = document.createElement("label");
      const input = document.createElement("input");
      input.type = "radio";
      input.name = "model";
      input.value = value;
      input.checked = value === defaultName;
      input.addEventListener("change", () => modelChosen(value));
      label.append(input, document.createTextNode(text));
      picker.append(label);
    }
  }

  async function start() {
    resetCanvas();
    setBusy();
    try {
      const answer = await getJson("models.json");
      state.models = answer.models;
      state.reader = answer.reader || null;
      state.choice = answer.default;
      state.defaultModel = answer.default;
      state.offered = answer.inference || ["server"];
      buildPicker(answer.models, answer.default);
      $("inference").hidden = state.offered.length < 2;
      const restoredWhere = document.querySelector('#inference input[name="inference"]:checked');
      const where = state.offered.includes(restoredWhere?.value) ? restoredWhere.value : state.offered[0];
      if (where !== state.inference) inferenceChosen(where);
      const restored = document.querySelector('#mode input[name="mode"]:checked'); // a reload keeps it
      if (restored && restored.value !== state.mode) modeChosen(restored.value);
      document.body.dataset.ready = "true";
      showEmpty();
    } catch (error) {
      showMessage(`Cannot load the page's models.json: ${error.message}`, true);
    }
  }

  // A static site: a service worker keeps it working offline after the first visit (sw.js,
  // written by the export with the list of the site's files).
  function offline() {
    if (!("serviceWorker" in navigator)) return;
    navigator.serviceWorker.register("sw.js")
      .then(() => navigator.serviceWorker.ready)
      .then(() => { document.body.dataset.offline = "ready"; })
      .catch((error) => { document.body.dataset.offline = `unavailable: ${error.message}`; });
  }

  start();
})();
