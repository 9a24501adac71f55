// Server-sent events, as the WHATWG HTML standard parses them, for a fetch() body.
//
// SSEParser: feed(text) -> the `data` payloads of the events completed by `text`
// (strings; multi-line data joined with "\n"); comments (": keep-alive") and other fields
// (event, id, retry) are skipped. end() -> the payload of a last event not followed by a
// blank line, if any.
// readEvents(body, onData): reads a ReadableStream of bytes to its end, decoding UTF-8
// across chunk boundaries, and calls onData(payload) per event; rejects as the reader does
// (an AbortError when the fetch was aborted).

export class SSEParser {
  constructor() {
    this.buffer = "";
    this.data = [];
    this.pendingCR = false;
  }

  feed(text) {
    const out = [];
    if (this.pendingCR && text.startsWith("\n")) text = text.slice(1); // "\r" + "\n" split across chunks
    this.pendingCR = false;
    this.buffer += text;
    const lines = this.buffer.split(/\r\n|\r|\n/);
    this.buffer = lines.pop(); // an unfinished line (may be "")
    if (this.buffer === "" && text.endsWith("\r")) this.pendingCR = true;
    for (const line of lines) this._line(line, out);
    return out;
  }

  end() {
    const out = [];
    if (this.buffer) this._line(this.buffer, out);
    this.buffer = "";
    this._line("", out);
    return out;
  }

  _line(line, out) {
    if (line === "") {
      if (this.data.length) out.push(this.data.join("\n"));
      this.data = [];
      return;
    }
    if (line.startsWith(":")) return;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.data.push(value);
  }
}

export async function readEvents(body, onData) {
  const reader = body.getReader();
  const decoder = new TextDecoder("utf-8");
  const parser = new SSEParser();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    for (const data of parser.feed(decoder.decode(value, { stream: true }))) onData(data);
  }
  for (const data of parser.feed(decoder.decode())) onData(data);
  for (const data of parser.end()) onData(data);
}
