// The View code dialog: one tab per language, the snippet of the request the page would
// send next, a Copy button.
//
// createCodeView(codeFor) wires the dialog's elements (#code-dialog, #code-tabs, #code,
// #copy-code, #copy-status, #code-close) and returns { open(), refresh() }: refresh()
// re-renders the snippet when the dialog is open (call it whenever a setting changes).
// `codeFor(language)` -> the snippet text (snippets.snippet of the pending request).

import { LANGUAGES } from "./snippets.js";

const $ = (id) => document.getElementById(id);

async function copy(codeElement) {
  try {
    await navigator.clipboard.writeText(codeElement.textContent); // secure contexts (https, localhost)
    return true;
  } catch {
    const range = document.createRange(); // elsewhere: select it and copy the selection
    range.selectNodeContents(codeElement);
    const selection = getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    return document.execCommand("copy");
  }
}

export function createCodeView(codeFor) {
  let language = LANGUAGES[0].id;
  const ids = LANGUAGES.map((l) => l.id);

  function refresh() {
    if (!$("code-dialog").open) return;
    $("code").textContent = codeFor(language);
    $("copy-status").textContent = "";
    for (const tab of $("code-tabs").children) {
      const selected = tab.dataset.language === language;
      tab.setAttribute("aria-selected", String(selected));
      tab.tabIndex = selected ? 0 : -1;
    }
  }

  for (const { id, label } of LANGUAGES) {
    const tab = document.createElement("button");
    tab.type = "button";
    tab.role = "tab";
    tab.id = `tab-${id}`;
    tab.dataset.language = id;
    tab.textContent = label;
    tab.setAttribute("aria-controls", "code-panel");
    tab.addEventListener("click", () => { language = id; refresh(); });
    $("code-tabs").append(tab);
  }
  $("code-tabs").addEventListener("keydown", (e) => { // arrow keys move between tabs
    if (e.key !== "ArrowRight" && e.key !== "ArrowLeft") return;
    language = ids[(ids.indexOf(language) + (e.key === "ArrowRight" ? 1 : ids.length - 1)) % ids.length];
    refresh();
    $(`tab-${language}`).focus();
  });
  $("code-close").addEventListener("click", () => $("code-dialog").close());
  $("copy-code").addEventListener("click", async () => {
    const ok = await copy($("code"));
    $("copy-status").textContent = ok ? "Copied." : "Select the code and copy it by hand.";
  });

  return {
    open() {
      $("code-dialog").showModal();
      refresh();
    },
    refresh,
  };
}
