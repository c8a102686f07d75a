// Renames the imports of the release .wasm to short names, and the keys of the JS glue's
// import object with them. wasm-bindgen's import names are long and hashed
// (`./hablar_client_bg.js` / `__wbg_setTimeout_3be63b067e1354c2`), appear in both files
// and gzip badly. Exports are left alone (`init()` resolves to them; `memory` is public).
// Usage: node shorten-imports.mjs <module.wasm> <glue.js>   (both rewritten in place)
// Fails without writing anything if the glue does not hold each import exactly once.

import { readFileSync, writeFileSync } from "node:fs";

const [wasmPath, jsPath] = process.argv.slice(2);
const GLUE_MODULE = "./hablar_client_bg.js";
const NEW_MODULE = "a";

const wasm = readFileSync(wasmPath);
let js = readFileSync(jsPath, "utf8");

let pos = 0;
const uleb = () => {
  let n = 0;
  let shift = 0;
  let b;
  do {
    b = wasm[pos++];
    n += (b & 0x7f) * 2 ** shift;
    shift += 7;
  } while (b & 0x80);
  return n;
};
const name = () => {
  const len = uleb();
  const s = wasm.toString("utf8", pos, pos + len);
  pos += len;
  return s;
};
const limits = () => {
  const flags = wasm[pos++];
  uleb();
  if (flags & 1) uleb();
};
const encUleb = (n) => {
  const out = [];
  do {
    let b = n & 0x7f;
    n = Math.floor(n / 128);
    if (n) b |= 0x80;
    out.push(b);
  } while (n);
  return Buffer.from(out);
};
const encName = (s) => {
  const b = Buffer.from(s, "utf8");
  return Buffer.concat([encUleb(b.length), b]);
};
// a..z, A..Z, then two letters: valid JS identifiers, none a keyword.
const LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
const shortName = (i) =>
  i < LETTERS.length
    ? LETTERS[i]
    : LETTERS[Math.floor(i / LETTERS.length) - 1] + LETTERS[i % LETTERS.length];

if (wasm.readUInt32LE(0) !== 0x6d736100) throw new Error(`${wasmPath}: not a wasm module`);
pos = 8;
const parts = [wasm.subarray(0, 8)];
const renamed = new Map();
while (pos < wasm.length) {
  const start = pos;
  const id = wasm[pos++];
  const size = uleb();
  const end = pos + size;
  if (id !== 2) {
    parts.push(wasm.subarray(start, end));
    pos = end;
    continue;
  }
  const count = uleb();
  const entries = [encUleb(count)];
  for (let i = 0; i < count; i++) {
    const module = name();
    const field = name();
    const descStart = pos;
    const kind = wasm[pos++];
    if (kind === 0) uleb(); // function: type index
    else if (kind === 1) { pos++; limits(); } // table: reftype, limits
    else if (kind === 2) limits(); // memory
    else if (kind === 3) pos += 2; // global: valtype, mutability
    else if (kind === 4) { pos++; uleb(); } // tag
    else throw new Error(`unknown import kind ${kind}`);
    const desc = wasm.subarray(descStart, pos);
    if (module !== GLUE_MODULE) throw new Error(`unexpected import module ${module}`);
    if (!renamed.has(field)) renamed.set(field, shortName(renamed.size));
    entries.push(encName(NEW_MODULE), encName(renamed.get(field)), desc);
  }
  if (pos !== end) throw new Error("import section not read to its end");
  const body = Buffer.concat(entries);
  parts.push(Buffer.from([2]), encUleb(body.length), body);
}

const replaceOnce = (from, to) => {
  const pieces = js.split(from);
  if (pieces.length !== 2) throw new Error(`glue holds "${from}" ${pieces.length - 1} times`);
  js = pieces.join(to);
};
for (const [field, short] of renamed) {
  replaceOnce(`\n        ${field}: function`, `\n        ${short}: function`);
}
replaceOnce(`"${GLUE_MODULE}": import0`, `"${NEW_MODULE}": import0`);

writeFileSync(wasmPath, Buffer.concat(parts));
writeFileSync(jsPath, js);
