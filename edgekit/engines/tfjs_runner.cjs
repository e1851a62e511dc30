// edgekit's TF.js runner: stock TensorFlow.js in Node.js, driven by edgekit/engines/tfjs.py.
//
// Frames on stdin and stdout, both ways: a 4-byte little-endian length, a JSON header of
// that length, then `payload_bytes` of raw tensor data (tensors in header order, each
// `bytes` long, little-endian). One request, one reply:
//   {cmd: "load", dir, backend: "cpu"|"wasm"}           -> inputs, outputs, versions
//   {cmd: "run", tensors: [{name, dtype, shape, bytes}]} -> the signature's outputs
//   {cmd: "time", tensors, warmup, runs}                -> cold_ms and per-run ms, timed here
//   {cmd: "throughput", tensors, min_seconds, min_calls} -> calls and seconds
//   {cmd: "memory"}                                      -> VmHWM, and VmRSS before any model
// Anything TF.js prints goes to stderr: stdout carries frames only.
'use strict';
const fs = require('fs');
const path = require('path');

console.log = console.info = console.warn = console.error;
const tf = require('@tensorflow/tfjs-core');
require('@tensorflow/tfjs-backend-cpu');
const wasm = require('@tensorflow/tfjs-backend-wasm');
const converter = require('@tensorflow/tfjs-converter');

const ARRAYS = {float32: Float32Array, int32: Int32Array, bool: Uint8Array};
const baselineMb = statusMb('VmRSS');  // Node and TF.js loaded, no model yet
let model = null;
let asyncOnly = false;

function fileHandler(dir) {
  // Pure TF.js has no file:// loader in Node: read model.json and its shards ourselves.
  return {
    load: async () => {
      const json = JSON.parse(fs.readFileSync(path.join(dir, 'model.json'), 'utf8'));
      const specs = [];
      const parts = [];
      for (const group of json.weightsManifest) {
        specs.push(...group.weights);
        for (const p of group.paths) parts.push(fs.readFileSync(path.join(dir, p)));
      }
      const all = Buffer.concat(parts);
      return {
        modelTopology: json.modelTopology, format: json.format, generatedBy: json.generatedBy,
        convertedBy: json.convertedBy, signature: json.signature, userDefinedMetadata: json.userDefinedMetadata,
        weightSpecs: specs, weightData: all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength),
      };
    },
  };
}

function statusMb(field) {
  const line = fs.readFileSync('/proc/self/status', 'utf8').split('\n').find(l => l.startsWith(field + ':'));
  return line ? parseInt(line.split(/\s+/)[1], 10) / 1024 : null;
}

function describe(keys, nodes) {
  // `keys`: the names execute() takes (the signature's keys); `nodes`: the graph nodes behind them
  return nodes.map((n, i) => ({name: keys[i], node: n.name, dtype: n.dtype ?? null, shape: n.shape ?? null}));
}

function feeds(header, payload) {
  const out = {};
  let offset = 0;
  for (const t of header.tensors) {
    const bytes = payload.subarray(offset, offset + t.bytes);
    offset += t.bytes;
    const copy = new Uint8Array(bytes).buffer;  // aligned, owned
    const values = new ARRAYS[t.dtype](copy);
    out[t.name] = tf.tensor(values, t.shape, t.dtype);
  }
  return out;
}

async function predict(inputs) {
  const names = model.outputNodes;
  if (!asyncOnly) {
    try {
      return [names, [].concat(model.execute(inputs, names))];
    } catch (error) {
      if (!/executeAsync/.test(String(error.message))) throw error;
      asyncOnly = true;  // control flow or dynamic shapes: TF.js runs those asynchronously only
    }
  }
  return [names, [].concat(await model.executeAsync(inputs, names))];
}

async function once(inputs) {
  const [, outputs] = await predict(inputs);
  for (const o of outputs) await o.data();  // wait for the backend, as an app reading results does
  tf.dispose(outputs);
}

async function handle(header, payload) {
  switch (header.cmd) {
    case 'load': {
      if (!(await tf.setBackend(header.backend))) throw new Error(`TF.js backend ${header.backend} did not start`);
      await tf.ready();
      const started = performance.now();
      model = await converter.loadGraphModel(fileHandler(header.dir));
      return [{inputs: describe(model.inputNodes, model.inputs), outputs: describe(model.outputNodes, model.outputs), backend: tf.getBackend(),
               tfjs: tf.version_core, node: process.version, load_ms: performance.now() - started,
               threads: header.backend === 'wasm' ? wasm.getThreadsCount() : 1}, []];
    }
    case 'run': {
      const inputs = feeds(header, payload);
      const [names, outputs] = await predict(inputs);
      const tensors = [];
      const buffers = [];
      for (let i = 0; i < outputs.length; i++) {
        const data = await outputs[i].data();
        const buffer = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
        tensors.push({name: names[i], dtype: outputs[i].dtype, shape: outputs[i].shape, bytes: buffer.length});
        buffers.push(buffer);
      }
      tf.dispose([...outputs, ...Object.values(inputs)]);
      return [{tensors}, buffers];
    }
    case 'time': {
      const inputs = feeds(header, payload);
      let start = performance.now();
      await once(inputs);
      const cold = performance.now() - start;
      for (let i = 0; i < header.warmup; i++) await once(inputs);
      const samples = [];
      for (let i = 0; i < header.runs; i++) {
        start = performance.now();
        await once(inputs);
        samples.push(performance.now() - start);
      }
      tf.dispose(Object.values(inputs));
      return [{cold_ms: cold, samples_ms: samples}, []];
    }
    case 'throughput': {
      const inputs = feeds(header, payload);
      await once(inputs);
      let calls = 0;
      const start = performance.now();
      while (calls < header.min_calls || performance.now() - start < header.min_seconds * 1000) {
        await once(inputs);
        calls++;
      }
      const seconds = (performance.now() - start) / 1000;
      tf.dispose(Object.values(inputs));
      return [{calls, seconds}, []];
    }
    case 'memory':
      return [{peak_rss_mb: statusMb('VmHWM'), baseline_rss_mb: baselineMb}, []];
    default:
      throw new Error(`unknown command ${header.cmd}`);
  }
}

function send(header, buffers) {
  header.payload_bytes = buffers.reduce((n, b) => n + b.length, 0);
  const json = Buffer.from(JSON.stringify(header));
  const size = Buffer.alloc(4);
  size.writeUInt32LE(json.length);
  for (const part of [size, json, ...buffers]) {
    let written = 0;
    while (written < part.length) written += fs.writeSync(1, part, written);
  }
}

let pending = Buffer.alloc(0);
let queue = Promise.resolve();
process.stdin.on('data', chunk => {
  pending = Buffer.concat([pending, chunk]);
  for (;;) {
    if (pending.length < 4) return;
    const size = pending.readUInt32LE(0);
    if (pending.length < 4 + size) return;
    const header = JSON.parse(pending.subarray(4, 4 + size).toString('utf8'));
    const total = 4 + size + (header.payload_bytes || 0);
    if (pending.length < total) return;
    const payload = pending.subarray(4 + size, total);
    pending = pending.subarray(total);
    queue = queue.then(() => handle(header, payload))
      .then(([reply, buffers]) => send({ok: true, ...reply}, buffers))
      .catch(error => { console.error(error && error.stack); send({ok: false, error: String(error && error.message || error)}, []); });
  }
});
process.stdin.on('end', () => queue.then(() => process.exit(0)));
