// Markdown of untrusted model output -> sanitized HTML, with marked (GFM) and DOMPurify,
// both served from ../vendor (copied from npm by build.sh).
//
// loadRenderer() -> Promise<boolean>: true when both libraries loaded. Until then, or when
// they are missing, renderInto() shows the text as plain text (a DOM text node), so
// nothing the model writes can ever become markup without the sanitizer.
// renderInto(element, text): replaces element's children with the rendered markdown.
// toSafeHtml(text) -> string: the sanitized HTML (null without the libraries).

let marked = null;
let purify = null;

const PURIFY_OPTIONS = {
  USE_PROFILE: { html: true }, // no SVG or MathML
  FORBID_TAGS: ["style", "svg", "math", "form", "input", "button", "textarea", "select"],
  FORBID_ATTR: ["style"],
};

export async function loadRenderer() {
  try {
    const [markedModule, purifyModule] = await Promise.all([
      import("../vendor/marked.esm.js"),
      import("../vendor/purify.es.mjs"),
    ]);
    const dompurify = purifyModule.default;
    if (!dompurify || !dompurify.isSupported) return false;
    // Links open in a new tab, without the page as opener or referrer.
    dompurify.addHook("afterSanitizeAttributes", (node) => {
      if (node.tagName === "A" && node.hasAttribute("href")) {
        node.setAttribute("target", "_blank");
        node.setAttribute("rel", "noopener noreferrer nofollow");
      }
    });
    marked = new markedModule.Marked({ gfm: true, breaks: true, async: false });
    purify = dompurify;
    return true;
  } catch (e) {
    console.warn("markdown renderer unavailable, answers are shown as plain text:", e);
    return false;
  }
}

export function toSafeHtml(text) {
  if (!marked || !purify) return null;
  return purify.sanitize(marked.parse(text), PURIFY_OPTIONS);
}

export function renderInto(element, text) {
  if (!marked || !purify) {
    element.textContent = text;
    return;
  }
  // A fragment, not innerHTML: the sanitized nodes are inserted as they are, not re-parsed.
  element.replaceChildren(purify.sanitize(marked.parse(text), { ...PURIFY_OPTIONS, RETURN_DOM_FRAGMENT: true }));
}
