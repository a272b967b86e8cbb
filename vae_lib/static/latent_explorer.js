// Front end of vae_lib.widgets.LatentExplorer (an anywidget ES module).
//
// The decoder p_theta(x|z) runs here, in the browser: its weights arrive in the widget state as
// little-endian float16 base64 strings, are widened once to Float32Array, and every slider move runs
// the MLP forward pass (Linear, activation, ..., Linear, sigmoid) and paints the 28 x 28 canvas.
// No kernel is needed, so the widget stays interactive on the static site. The Python twin of this
// forward pass is vae_lib.widgets.decode_with_state; tests compare the two pixel by pixel.

// ---------------------------------------------------------------- decoding the state

// float16 bit pattern -> number, for all 65536 patterns at once (a table beats bit twiddling per
// weight). IEEE 754 half: 1 sign bit, 5 exponent bits (bias 15), 10 fraction bits.
let HALF_TABLE = null;
function halfTable() {
  if (HALF_TABLE) return HALF_TABLE;
  HALF_TABLE = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const exponent = (h >> 10) & 0x1f;
    const fraction = h & 0x3ff;
    let value;
    if (exponent === 0) value = sign * fraction * 2 ** -24; // subnormal
    else if (exponent === 31) value = fraction ? NaN : sign * Infinity;
    else value = sign * (1 + fraction / 1024) * 2 ** (exponent - 15);
    HALF_TABLE[h] = value;
  }
  return HALF_TABLE;
}

function base64Bytes(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

// {dtype, shape, data} (vae_lib.widgets.encode_array) -> a typed array of the values, row-major.
export function decodeArray(encoded) {
  const bytes = base64Bytes(encoded.data);
  const view = new DataView(bytes.buffer);
  const count = encoded.shape.reduce((a, b) => a * b, 1);
  if (encoded.dtype === "uint8") return bytes;
  const out = new Float32Array(count);
  if (encoded.dtype === "float16") {
    const table = halfTable();
    for (let i = 0; i < count; i++) out[i] = table[view.getUint16(2 * i, true)];
  } else if (encoded.dtype === "float32") {
    for (let i = 0; i < count; i++) out[i] = view.getFloat32(4 * i, true);
  } else {
    throw new Error(`latent explorer: unsupported dtype ${encoded.dtype}`);
  }
  return out;
}

// ---------------------------------------------------------------- the forward pass

export function buildDecoder(state) {
  const layers = state.layers.map((layer) => {
    const [nOut, nIn] = layer.weight.shape;
    return { nIn, nOut, weight: decodeArray(layer.weight), bias: decodeArray(layer.bias) };
  });
  // Float64 activations: the sums then round only once, like the float64 Python reference.
  const buffers = layers.map((layer) => new Float64Array(layer.nOut));
  return { layers, buffers, activation: state.activation, zDim: state.z_dim, xDim: state.x_dim };
}

// Pixel probabilities sigmoid(logits) for one latent z (an array of zDim numbers).
export function decode(decoder, z) {
  let input = z;
  const last = decoder.layers.length - 1;
  decoder.layers.forEach((layer, l) => {
    const out = decoder.buffers[l];
    const { nIn, nOut, weight, bias } = layer;
    for (let o = 0; o < nOut; o++) {
      let sum = bias[o];
      const row = o * nIn; // weight is (nOut, nIn), row-major, as torch stores it
      for (let i = 0; i < nIn; i++) sum += weight[row + i] * input[i];
      if (l < last) sum = decoder.activation === "tanh" ? Math.tanh(sum) : sum > 0 ? sum : 0;
      out[o] = sum;
    }
    input = out;
  });
  const probs = new Float64Array(decoder.xDim);
  for (let d = 0; d < decoder.xDim; d++) probs[d] = 1 / (1 + Math.exp(-input[d]));
  return probs;
}

// ---------------------------------------------------------------- drawing

function h(tag, attrs = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.appendChild(child);
  return node;
}

function imageCanvas(side, px, label) {
  const canvas = h("canvas", { class: "vle-image", width: side, height: side, "aria-label": label });
  canvas.style.width = canvas.style.height = `${px}px`;
  return canvas;
}

// Probability p is drawn dark (grey level 255 * (1 - p)), as matplotlib's gray_r in the book.
function paint(canvas, probs) {
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(canvas.width, canvas.height);
  for (let d = 0; d < probs.length; d++) {
    const grey = Math.round(255 * (1 - probs[d]));
    image.data[4 * d] = image.data[4 * d + 1] = image.data[4 * d + 2] = grey;
    image.data[4 * d + 3] = 255;
  }
  ctx.putImageData(image, 0, 0);
}

function gaussian() {
  // Box-Muller; 1 - random() avoids log(0).
  const u = 1 - Math.random();
  const v = Math.random();
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
}

// ---------------------------------------------------------------- the widget

function render({ model, el }) {
  const state = model.get("decoder");
  const decoder = buildDecoder(state);
  const [side] = state.image_shape;
  const zRange = model.get("z_range");
  const px = model.get("image_px");
  const digits = model.get("digits") || {};
  const hasDigits = Boolean(digits.n);
  const mu = hasDigits ? decodeArray(digits.mu) : null; // (n, zDim)
  const sigma = hasDigits ? decodeArray(digits.sigma) : null;
  const images = hasDigits ? decodeArray(digits.images) : null; // (n, xDim) in 0..255
  const zDim = decoder.zDim;
  const z = Float64Array.from(model.get("z"));
  let band = null; // [mu, sigma] of the selected digit, drawn behind the sliders

  const root = h("div", { class: "vle" });
  const title = model.get("title");
  if (title) root.appendChild(h("div", { class: "vle-title", text: title }));

  // Tabs: the prior view and, when digits came along, the posterior view.
  const tabs = h("div", { class: "vle-tabs", role: "tablist" });
  const priorTab = h("button", { class: "vle-tab vle-active", type: "button", text: "Prior p(z)" });
  const postTab = h("button", { class: "vle-tab", type: "button", text: "Posterior q(z|x)" });
  tabs.appendChild(priorTab);
  if (hasDigits) tabs.appendChild(postTab);
  root.appendChild(tabs);

  const body = h("div", { class: "vle-body" });
  const images_ = h("div", { class: "vle-images" });
  const output = imageCanvas(side, px, "decoded image");
  const inputCanvas = imageCanvas(side, px, "input digit");
  const inputFigure = h("figure", { class: "vle-figure vle-hidden" }, [
    inputCanvas, h("figcaption", { text: "input x" })]);
  const outputCaption = h("figcaption", { text: "decoded sigmoid(logits)" });
  images_.append(inputFigure, h("figure", { class: "vle-figure" }, [output, outputCaption]));

  const controls = h("div", { class: "vle-controls" });
  body.append(images_, controls);
  root.appendChild(body);

  // A 2-D pad for 2-D models: click or drag to set z; prior contours at 1 and 2 standard deviations.
  let pad = null;
  if (zDim === 2) {
    pad = h("canvas", { class: "vle-pad", width: 2 * px, height: 2 * px, "aria-label": "latent pad" });
    pad.style.width = pad.style.height = `${px}px`;
    controls.appendChild(pad);
  }

  // Few sliders sit beside the images; many go below them, in two columns, at a usable width.
  const manySliders = zDim > 4;
  const sliderBox = h("div", { class: manySliders ? "vle-sliders vle-two-columns" : "vle-sliders" });
  const sliders = [];
  const readouts = [];
  const bands = [];
  for (let k = 0; k < zDim; k++) {
    const slider = h("input", { type: "range", min: -zRange, max: zRange, step: 0.01,
                                class: "vle-slider", "aria-label": `z${k + 1}`, "data-dim": k });
    const bandNode = h("div", { class: "vle-band" });
    const track = h("div", { class: "vle-track" }, [bandNode, slider]);
    const readout = h("span", { class: "vle-readout" });
    sliderBox.appendChild(h("label", { class: "vle-row" }, [
      h("span", { class: "vle-name", text: `z${k + 1}` }), track, readout]));
    sliders.push(slider);
    readouts.push(readout);
    bands.push(bandNode);
  }
  if (manySliders) root.appendChild(sliderBox);
  else controls.appendChild(sliderBox);

  const sampleButton = h("button", { class: "vle-button", type: "button", text: "Sample z ~ N(0, I)" });
  const resetButton = h("button", { class: "vle-button", type: "button", text: "Reset z = 0" });
  const priorButtons = h("div", { class: "vle-buttons" }, [sampleButton, resetButton]);
  controls.appendChild(priorButtons);

  // Posterior controls: pick a digit; sample from q(z|x); interpolate to a second digit.
  const digitOptions = () => Array.from({ length: digits.n || 0 }, (_, i) =>
    h("option", { value: i, text: digits.labels && digits.labels.length ? `digit ${digits.labels[i]} (#${i + 1})` : `#${i + 1}` }));
  const pickA = h("select", { class: "vle-select", "aria-label": "test digit" }, digitOptions());
  const pickB = h("select", { class: "vle-select", "aria-label": "interpolate to" }, digitOptions());
  if (hasDigits && digits.n > 1) pickB.value = "1";
  const tSlider = h("input", { type: "range", min: 0, max: 1, step: 0.01, value: 0,
                               class: "vle-t", "aria-label": "interpolation t" });
  const tReadout = h("span", { class: "vle-readout vle-wide", text: "t = 0.00" });
  const postSample = h("button", { class: "vle-button", type: "button", text: "Sample z ~ q(z|x)" });
  const postPanel = h("div", { class: "vle-posterior vle-hidden" }, [
    h("label", { class: "vle-row" }, [h("span", { text: "test digit x" }), pickA]),
    h("div", { class: "vle-buttons" }, [postSample]),
    h("label", { class: "vle-row" }, [h("span", { text: "interpolate to" }), pickB]),
    h("label", { class: "vle-row" }, [h("span", { text: "t" }), tSlider, tReadout]),
    h("div", { class: "vle-note", text: "orange bands (and the ellipse on a 2-D pad): mu ± 2 sigma of q(z|x); t moves z from mu(x) to mu(x') of the second digit" }),
  ]);
  controls.appendChild(postPanel);
  el.appendChild(root);

  const clamp = (v) => Math.max(-zRange, Math.min(zRange, v));

  function drawPad() {
    if (!pad) return;
    const ctx = pad.getContext("2d");
    const n = pad.width;
    const toPx = (v) => ((v + zRange) / (2 * zRange)) * n;
    ctx.clearRect(0, 0, n, n);
    ctx.fillStyle = "#fafafa";
    ctx.fillRect(0, 0, n, n);
    ctx.strokeStyle = "#ccc";
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.moveTo(toPx(0), 0); ctx.lineTo(toPx(0), n);
    ctx.moveTo(0, toPx(0)); ctx.lineTo(n, toPx(0));
    ctx.stroke();
    ctx.setLineDash([4, 4]);
    for (const r of [1, 2]) {
      ctx.beginPath();
      ctx.arc(toPx(0), toPx(0), (r / (2 * zRange)) * n, 0, 2 * Math.PI);
      ctx.stroke();
    }
    ctx.setLineDash([]);
    if (hasDigits && postTab.classList.contains("vle-active")) {
      ctx.font = `${Math.round(n / 20)}px sans-serif`;
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      for (let i = 0; i < digits.n; i++) {
        ctx.fillStyle = "#888";
        ctx.fillText(digits.labels && digits.labels.length ? String(digits.labels[i]) : "·",
                     toPx(mu[i * zDim]), n - toPx(mu[i * zDim + 1]));
      }
      if (band) {
        ctx.strokeStyle = "rgba(31, 119, 180, 0.8)";
        ctx.beginPath();
        ctx.ellipse(toPx(band[0][0]), n - toPx(band[0][1]), (2 * band[1][0] / (2 * zRange)) * n,
                    (2 * band[1][1] / (2 * zRange)) * n, 0, 0, 2 * Math.PI);
        ctx.stroke();
      }
    }
    // The current z; the vertical axis points up, as in the book's figures.
    ctx.fillStyle = "#d62728";
    ctx.beginPath();
    ctx.arc(toPx(clamp(z[0])), n - toPx(clamp(z[1])), n / 40, 0, 2 * Math.PI);
    ctx.fill();
  }

  function drawBands() {
    for (let k = 0; k < zDim; k++) {
      if (!band) { bands[k].style.display = "none"; continue; }
      const lo = clamp(band[0][k] - 2 * band[1][k]);
      const hi = clamp(band[0][k] + 2 * band[1][k]);
      bands[k].style.display = "block";
      bands[k].style.left = `${((lo + zRange) / (2 * zRange)) * 100}%`;
      bands[k].style.width = `${((hi - lo) / (2 * zRange)) * 100}%`;
    }
  }

  // Decode z and paint: the hot path timed by bench/widget_latency.py.
  function redraw() {
    for (let k = 0; k < zDim; k++) {
      sliders[k].value = clamp(z[k]);
      readouts[k].textContent = z[k].toFixed(2);
    }
    paint(output, decode(decoder, z));
    output.dataset.z = JSON.stringify(Array.from(z));
    drawPad();
  }

  function push() {
    // To the kernel, when there is one (save_changes does nothing on the static site).
    model.set("z", Array.from(z));
    model.save_changes();
  }

  function setZ(values, sync = true) {
    for (let k = 0; k < zDim; k++) z[k] = values[k];
    redraw();
    if (sync) push();
  }

  sliders.forEach((slider, k) => {
    slider.addEventListener("input", () => { z[k] = Number(slider.value); redraw(); });
    slider.addEventListener("change", push);
  });

  if (pad) {
    let dragging = false;
    const fromEvent = (event) => {
      const box = pad.getBoundingClientRect();
      const x = ((event.clientX - box.left) / box.width) * 2 * zRange - zRange;
      const y = zRange - ((event.clientY - box.top) / box.height) * 2 * zRange;
      z[0] = clamp(x); z[1] = clamp(y);
      redraw();
    };
    pad.addEventListener("pointerdown", (e) => { dragging = true; pad.setPointerCapture(e.pointerId); fromEvent(e); });
    pad.addEventListener("pointermove", (e) => { if (dragging) fromEvent(e); });
    pad.addEventListener("pointerup", () => { dragging = false; push(); });
  }

  sampleButton.addEventListener("click", () => setZ(Array.from({ length: zDim }, () => clamp(gaussian()))));
  resetButton.addEventListener("click", () => setZ(new Array(zDim).fill(0)));

  function digitMu(i) { return Array.from(mu.subarray(i * zDim, (i + 1) * zDim)); }
  function digitSigma(i) { return Array.from(sigma.subarray(i * zDim, (i + 1) * zDim)); }

  function showDigit() {
    const a = Number(pickA.value);
    const pixels = new Float64Array(decoder.xDim);
    for (let d = 0; d < decoder.xDim; d++) pixels[d] = images[a * decoder.xDim + d] / 255;
    paint(inputCanvas, pixels);
    band = [digitMu(a), digitSigma(a)];
    drawBands();
    interpolate();
  }

  function interpolate() {
    const t = Number(tSlider.value);
    const a = digitMu(Number(pickA.value));
    const b = digitMu(Number(pickB.value));
    tReadout.textContent = `t = ${t.toFixed(2)}`;
    outputCaption.textContent = t === 0 ? "reconstruction sigmoid(logits) at z = mu(x)" : "decoded at z = (1 - t) mu(x) + t mu(x')";
    setZ(a.map((v, k) => (1 - t) * v + t * b[k]), false);
  }

  if (hasDigits) {
    pickA.addEventListener("change", () => { tSlider.value = 0; showDigit(); push(); });
    pickB.addEventListener("change", () => { interpolate(); push(); });
    tSlider.addEventListener("input", interpolate);
    tSlider.addEventListener("change", push);
    postSample.addEventListener("click", () => {
      const a = Number(pickA.value);
      const m = digitMu(a);
      const s = digitSigma(a);
      outputCaption.textContent = "decoded at z ~ q(z|x)";
      setZ(m.map((v, k) => v + s[k] * gaussian()));
    });
  }

  function selectTab(posterior) {
    priorTab.classList.toggle("vle-active", !posterior);
    postTab.classList.toggle("vle-active", posterior);
    inputFigure.classList.toggle("vle-hidden", !posterior);
    postPanel.classList.toggle("vle-hidden", !posterior);
    priorButtons.classList.toggle("vle-hidden", posterior);
    if (posterior) {
      showDigit();
    } else {
      band = null;
      drawBands();
      outputCaption.textContent = "decoded sigmoid(logits)";
      redraw();
    }
  }
  priorTab.addEventListener("click", () => selectTab(false));
  postTab.addEventListener("click", () => selectTab(true));

  // z set from Python moves the sliders.
  const onChange = () => {
    const values = model.get("z");
    if (values.length === zDim && values.some((v, k) => v !== z[k])) setZ(values, false);
  };
  model.on("change:z", onChange);

  drawBands();
  redraw();
  root.dataset.ready = "true";
  return () => model.off("change:z", onChange);
}

export default { render };
