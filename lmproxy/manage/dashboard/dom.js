// Building DOM nodes.  Every value that comes from the config or the state
// reaches the page through textContent, Text nodes or attribute properties;
// nothing is ever parsed as HTML, so a service named "<b>x</b>" shows as
// exactly that.

/**
 * An element with properties and children.
 * @param {string} tag
 * @param {object} [props] "class" sets the class name, "text" the text
 *     content, "on..." adds a listener, anything else sets an attribute.
 * @param {...(Node | string | null | undefined)} children strings become
 *     Text nodes (never markup); null and undefined are left out.
 * @returns {HTMLElement}
 */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

/**
 * The coloured dot of a service.
 * @param {string} color a CSS colour.
 * @returns {HTMLElement}
 */
export function swatch(color) {
  const dot = el("span", { class: "swatch", "aria-hidden": "true" });
  dot.style.backgroundColor = color;
  return dot;
}

/**
 * Set a text only when it differs (no needless DOM mutation).
 * @param {Node} node
 * @param {string} text
 */
export function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

/**
 * An SVG element with attributes and children (an <svg> or inside one).
 * @param {string} tag
 * @param {object} [attrs] attributes, set as they are.
 * @param {...(Node | null | undefined)} children null and undefined are left out.
 * @returns {SVGElement}
 */
export function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}
