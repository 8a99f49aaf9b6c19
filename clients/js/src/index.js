// Reactive RTC browser and Node client: one ES module, no dependencies (uses the platform's
// fetch and WebSocket). Written from docs/protocol.md; behaves like the Rust SDK:
//   - resolve, then connect to the node named by the answer (through the gateway);
//   - reconnect with full-jitter backoff when the connection drops, the server says `move`, or a
//     connect is refused — resolving again each time;
//   - resume direct messages from the newest offset received (`resumeOffset`) and each joined
//     room from its newest room offset (`join` with `since`), so nothing is missed and nothing
//     comes twice; `recovered: false` (on `welcome` or `joined`) says the server could not;
//   - `send` is kept until answered and sent again with the same id after a reconnect or a
//     retryable error (the recipient's node delivers an id once); `publish` is answered once
//     (rooms do not deduplicate, so it is not re-sent on its own).

const CLOSE_REPLACED = 4003;

/** Error of a refused frame or request: `code` is the documented error code. */
export class RtcError extends Error {
  constructor(code, message, retryable = false) {
    super(message);
    this.name = "RtcError";
    this.code = code;
    this.retryable = retryable;
  }
}

/** Full-jitter exponential backoff. */
export class Backoff {
  constructor(initialMs = 100, maxMs = 10000) {
    this.initialMs = initialMs;
    this.maxMs = maxMs;
    this.attempt = 0;
  }
  next() {
    const cap = Math.min(this.maxMs, this.initialMs * 2 ** Math.min(this.attempt, 20));
    this.attempt += 1;
    return Math.random() * cap;
  }
  reset() {
    this.attempt = 0;
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * A connection that stays up. Events (`client.on(name, fn)`): `welcome` {node, epoch,
 * recovered, offset}, `message` {from, id, data, offset, room?}, `joined` {room, recovered,
 * offset}, `member` {room, clientId, event}, `state` ("connecting" | "open" | "reconnecting" |
 * "closed"), `error` (an RtcError that ends the client, or a refusal without a pending request).
 */
export class RtcClient {
  constructor(opts) {
    if (!opts || !opts.url || !opts.clientId) throw new Error("RtcClient needs url and clientId");
    this.base = opts.url.replace(/\/+$/, "");
    this.clientId = opts.clientId;
    this.token = opts.token; // a JWT, or a function returning one (or a promise of one)
    this.WebSocket = opts.WebSocket || globalThis.WebSocket;
    this.fetch = opts.fetch || globalThis.fetch.bind(globalThis);
    this.backoff = new Backoff(opts.backoffInitialMs ?? 100, opts.backoffMaxMs ?? 10000);
    this.connectTimeoutMs = opts.connectTimeoutMs ?? 10000;
    this.sendRetries = opts.sendRetries ?? 5;
    /** Newest direct-message offset received: the resume point. */
    this.offset = opts.resumeOffset ?? null;
    /** Per room: newest room offset received. */
    this.roomOffsets = new Map();
    this.node = null;
    this.state = "idle";
    this.rooms = new Map(); // room -> {presence}
    this.pending = new Map(); // id -> {frame, resolve, reject, kind, tries}
    this.handlers = new Map();
    this.nextId = 0;
    this.ws = null;
    this.closed = false;
    this.reconnects = 0;
    this.idPrefix = Math.random().toString(36).slice(2, 8);
  }

  on(event, fn) {
    if (!this.handlers.has(event)) this.handlers.set(event, new Set());
    this.handlers.get(event).add(fn);
    return () => this.handlers.get(event).delete(fn);
  }

  emit(event, value) {
    for (const fn of this.handlers.get(event) || []) {
      try {
        fn(value);
      } catch (e) {
        console.error("rtc handler failed", e);
      }
    }
  }

  setState(s) {
    if (this.state !== s) {
      this.state = s;
      this.emit("state", s);
    }
  }

  newId() {
    this.nextId += 1;
    return `${this.idPrefix}-${this.nextId}`;
  }

  /** Resolves and connects; resolves with the first welcome. */
  async connect() {
    this.closed = false;
    this.setState("connecting");
    const welcome = this.waitFor("welcome");
    this.loop();
    return welcome;
  }

  waitFor(event) {
    return new Promise((resolve, reject) => {
      const off = this.on(event, (v) => {
        off();
        offErr();
        resolve(v);
      });
      const offErr = this.on("fatal", (e) => {
        off();
        offErr();
        reject(e);
      });
    });
  }

  async bearer() {
    if (!this.token) return null;
    return typeof this.token === "function" ? await this.token() : this.token;
  }

  async resolve() {
    const headers = {};
    const jwt = await this.bearer();
    if (jwt) headers.authorization = `Bearer ${jwt}`;
    const r = await this.fetch(
      `${this.base}/api/v1/resolve?clientId=${encodeURIComponent(this.clientId)}`,
      { headers },
    );
    const body = await r.json().catch(() => ({}));
    if (r.status !== 200) {
      const retryable = r.status >= 500 || r.status === 409 || body.retryable === true;
      throw new RtcError(body.error || `http_${r.status}`, body.message || r.statusText, retryable);
    }
    return body;
  }

  // Keeps one connection up until close(): each round resolves, connects, serves until the
  // connection ends, and waits as the server or the backoff says.
  async loop() {
    while (!this.closed) {
      let waitMs;
      try {
        const res = await this.resolve();
        waitMs = await this.serve(res);
      } catch (e) {
        if (e instanceof RtcError && !e.retryable) {
          this.closed = true;
          this.setState("closed");
          this.emit("fatal", e);
          this.emit("error", e);
          this.failPending(e);
          return;
        }
        waitMs = this.backoff.next();
      }
      if (this.closed) break;
      this.setState("reconnecting");
      this.reconnects += 1;
      await sleep(waitMs ?? this.backoff.next());
    }
    this.setState("closed");
  }

  wsUrl(res) {
    const u = new URL(this.base);
    const scheme = u.protocol === "https:" ? "wss:" : "ws:";
    let q = `clientId=${encodeURIComponent(this.clientId)}&token=${encodeURIComponent(res.token)}`;
    if (this.offset !== null) q += `&resumeOffset=${this.offset}`;
    return `${scheme}//${u.host}${res.url}?${q}`;
  }

  // One connection: resolves with how long to wait before the next one.
  serve(res) {
    return new Promise((resolve) => {
      const ws = new this.WebSocket(this.wsUrl(res));
      this.ws = ws;
      let welcomed = false;
      let moveDelay = null;
      const timer = setTimeout(() => {
        if (!welcomed) ws.close();
      }, this.connectTimeoutMs);
      ws.onmessage = (ev) => {
        let f;
        try {
          f = JSON.parse(ev.data);
        } catch {
          return;
        }
        if (f.type === "welcome") {
          welcomed = true;
          clearTimeout(timer);
          this.backoff.reset();
          this.node = f.node;
          if (this.offset === null) this.offset = f.offset;
          this.setState("open");
          this.afterWelcome();
          this.emit("welcome", { node: f.node, epoch: f.epoch, recovered: f.recovered, offset: f.offset });
          return;
        }
        if (f.type === "move") {
          moveDelay = f.delayMs ?? 0;
          ws.close(1000, "moving");
          return;
        }
        this.onFrame(f);
      };
      ws.onclose = (ev) => {
        clearTimeout(timer);
        if (this.ws === ws) this.ws = null;
        this.onDisconnect();
        if (ev.code === CLOSE_REPLACED) {
          this.closed = true;
          this.emit("error", new RtcError("replaced", "replaced by a newer connection"));
        }
        resolve(moveDelay ?? (welcomed ? this.backoff.next() : this.backoff.next()));
      };
      ws.onerror = () => {};
    });
  }

  sendRaw(frame) {
    if (this.ws && this.ws.readyState === 1 && this.state === "open") {
      this.ws.send(JSON.stringify(frame));
      return true;
    }
    return false;
  }

  // After a (re)connect: join every room again from its newest offset, re-send unanswered
  // direct messages with their ids.
  afterWelcome() {
    for (const [room, o] of this.rooms) {
      const since = this.roomOffsets.get(room);
      const frame = { type: "join", room, presence: o.presence || undefined };
      if (since !== undefined) frame.since = since;
      else if (o.last) frame.last = o.last;
      this.sendRaw(frame);
    }
    for (const p of this.pending.values()) this.sendRaw(p.frame);
  }

  // The connection ended: what cannot be re-sent is answered with a retryable error.
  onDisconnect() {
    for (const [id, p] of this.pending) {
      if (p.kind !== "send") {
        this.pending.delete(id);
        p.reject(new RtcError("connection_lost", "the connection ended before an answer; the request may or may not have taken effect", true));
      }
    }
  }

  failPending(e) {
    for (const p of this.pending.values()) p.reject(e);
    this.pending.clear();
  }

  onFrame(f) {
    switch (f.type) {
      case "msg": {
        if (f.room !== undefined) {
          if (typeof f.offset === "number") {
            this.roomOffsets.set(f.room, Math.max(this.roomOffsets.get(f.room) ?? -1, f.offset));
          }
        } else if (typeof f.offset === "number") {
          this.offset = this.offset === null ? f.offset : Math.max(this.offset, f.offset);
        }
        this.emit("message", { from: f.from, id: f.id, data: f.data, offset: f.offset, room: f.room });
        return;
      }
      case "joined": {
        if (this.rooms.has(f.room)) {
          this.roomOffsets.set(f.room, Math.max(this.roomOffsets.get(f.room) ?? -1, f.offset));
        }
        this.answer(f.id, { room: f.room, recovered: f.recovered, offset: f.offset });
        this.emit("joined", { room: f.room, recovered: f.recovered, offset: f.offset });
        return;
      }
      case "member":
        this.emit("member", { room: f.room, clientId: f.clientId, event: f.event });
        return;
      case "ack":
        this.answer(f.id, { offset: f.offset });
        return;
      case "presence":
        this.answer(f.id, { members: f.members, truncated: f.truncated });
        return;
      case "online":
        this.answer(f.id, f.online);
        return;
      case "pong":
        this.answer(f.id, {});
        return;
      case "error": {
        const p = f.id !== undefined ? this.pending.get(f.id) : undefined;
        if (p && f.retryable && p.kind === "send" && p.tries < this.sendRetries) {
          p.tries += 1;
          setTimeout(() => this.sendRaw(p.frame), this.backoff.next());
          return;
        }
        const e = new RtcError(f.code, f.message, f.retryable);
        if (p) {
          this.pending.delete(f.id);
          p.reject(e);
        } else {
          this.emit("error", e);
        }
        return;
      }
      default:
      // A frame type this version does not know (a newer server): ignored.
    }
  }

  answer(id, value) {
    if (id === undefined) return;
    const p = this.pending.get(id);
    if (p) {
      this.pending.delete(id);
      p.resolve(value);
    }
  }

  request(kind, frame) {
    if (this.closed) return Promise.reject(new RtcError("closed", "the client is closed"));
    return new Promise((resolve, reject) => {
      this.pending.set(frame.id, { frame, resolve, reject, kind, tries: 0 });
      if (!this.sendRaw(frame) && kind !== "send") {
        this.pending.delete(frame.id);
        reject(new RtcError("not_connected", "not connected; retry once the state is open", true));
      }
    });
  }

  /** Sends `data` to client `to`; resolves with {offset} once Kafka has it. */
  send(to, data) {
    return this.request("send", { type: "send", id: this.newId(), to, data });
  }

  /** Publishes `data` to `room`; resolves with {offset} once Kafka has it. */
  publish(room, data) {
    return this.request("publish", { type: "publish", id: this.newId(), room, data });
  }

  /**
   * Joins `room` (and joins again after every reconnect, from its newest offset). `last`: get
   * the last N messages first; `presence`: get `member` events. Resolves with {recovered, offset}.
   */
  join(room, { last, presence } = {}) {
    this.rooms.set(room, { presence: !!presence, last });
    const frame = { type: "join", id: this.newId(), room };
    const since = this.roomOffsets.get(room);
    if (since !== undefined) frame.since = since;
    else if (last) frame.last = last;
    if (presence) frame.presence = true;
    return this.request("join", frame);
  }

  /** Leaves `room`. */
  leave(room) {
    this.rooms.delete(room);
    this.roomOffsets.delete(room);
    return this.request("leave", { type: "leave", id: this.newId(), room });
  }

  /** Who is in `room`: resolves with {members, truncated}. */
  presence(room) {
    return this.request("presence", { type: "presence", id: this.newId(), room });
  }

  /** Which of `clientIds` (at most 100) are online: resolves with the online ones. */
  online(clientIds) {
    return this.request("online", { type: "online", id: this.newId(), clientIds });
  }

  /** Round trip to the node (application-level ping). */
  ping() {
    return this.request("ping", { type: "ping", id: this.newId() });
  }

  /** Drops the current connection as a network failure would (for tests and demos). */
  dropConnection() {
    if (this.ws) this.ws.close(4000, "dropped by the client");
  }

  /** Closes for good (1000). */
  close() {
    this.closed = true;
    this.failPending(new RtcError("closed", "the client is closed"));
    if (this.ws) this.ws.close(1000, "bye");
    this.setState("closed");
  }
}

/**
 * `POST /api/v1/publish` for backends (Node, or a browser you trust with an API key): `message`
 * is {to|room, id, data, from?} or {messages: [...]}. Resolves with the JSON answer.
 */
export async function publishApi(url, apiKey, message, fetchImpl = globalThis.fetch) {
  const r = await fetchImpl(`${url.replace(/\/+$/, "")}/api/v1/publish`, {
    method: "POST",
    headers: { authorization: `Bearer ${apiKey}`, "content-type": "application/json" },
    body: JSON.stringify(message),
  });
  const body = await r.json().catch(() => ({}));
  if (r.status !== 200) {
    throw new RtcError(body.error || `http_${r.status}`, body.message || r.statusText, body.retryable === true);
  }
  return body;
}
