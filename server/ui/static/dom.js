// DOM helpers. Every piece of data goes in as a text node or an attribute
// value, never as markup: proxy fields, errors and names come from
// outside and must not become HTML.

const SVG_NS = "http://www.w3.org/2000/svg";

// el builds an element. attrs sets attributes (class, title, data-*);
// children are nodes or strings (text nodes); null and false are skipped.
export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

// svg builds an SVG element the same way.
export function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

function setAttrs(node, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    node.setAttribute(k, String(v));
  }
}

function append(node, children) {
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

// text replaces node's content with plain text, only when it changed, so
// that a refresh every second does not disturb selection or layout.
export function text(node, value) {
  const s = value === null || value === undefined ? "" : String(value);
  if (node.textContent !== s) node.textContent = s;
}

// clear removes every child of node.
export function clear(node) {
  while (node.firstChild) node.firstChild.remove();
}

// $ finds one element by id.
export function $(id) {
  const node = document.getElementById(id);
  if (!node) throw new Error("missing element #" + id);
  return node;
}
