// The JS client against a running stack (RTC_URL: the gateway; RTC_PUBLISH_KEY: a publish API
// key). Run by e2e/tests/js_sdk.rs, which starts the stack; by hand:
//   RTC_URL=http://127.0.0.1:8080 RTC_PUBLISH_KEY=local-dev-publish-key npm test
import { test } from "node:test";
import assert from "node:assert/strict";
import { RtcClient, RtcError, publishApi } from "../src/index.js";

const URL = process.env.RTC_URL;
const KEY = process.env.RTC_PUBLISH_KEY;
const run = Math.random().toString(36).slice(2, 8);
const name = (n) => `${n}-${run}`;

if (!URL) throw new Error("set RTC_URL to the gateway (http://host:port)");

/** Resolves with the next `n` events `kind` that pass `pred`, within `ms`. */
function collect(client, kind, n, pred = () => true, ms = 20000) {
  return new Promise((resolve, reject) => {
    const got = [];
    const timer = setTimeout(() => {
      off();
      reject(new Error(`only ${got.length}/${n} ${kind} events: ${JSON.stringify(got)}`));
    }, ms);
    const off = client.on(kind, (v) => {
      if (!pred(v)) return;
      got.push(v);
      if (got.length === n) {
        clearTimeout(timer);
        off();
        resolve(got);
      }
    });
  });
}

async function client(n, opts = {}) {
  const c = new RtcClient({ url: URL, clientId: name(n), backoffInitialMs: 50, backoffMaxMs: 1000, ...opts });
  const w = await c.connect();
  assert.equal(typeof w.node, "string");
  return c;
}

test("direct messages are acked with an offset and delivered with it", async () => {
  const [alice, bob] = [await client("alice"), await client("bob")];
  const got = collect(alice, "message", 2);
  const a1 = await bob.send(name("alice"), { text: "hi" });
  const a2 = await bob.send(name("alice"), [1, 2]);
  assert.ok(a2.offset > a1.offset);
  const msgs = await got;
  assert.deepEqual(msgs.map((m) => [m.from, m.data, m.offset]), [
    [name("bob"), { text: "hi" }, a1.offset],
    [name("bob"), [1, 2], a2.offset],
  ]);
  assert.equal(alice.offset, a2.offset);
  await assert.rejects(bob.send("", 1), (e) => e instanceof RtcError && e.code === "bad_request");
  alice.close();
  bob.close();
});

test("rooms: history on join, presence, member events, online", async () => {
  const room = name("room");
  const [carol, dan] = [await client("carol"), await client("dan")];
  await dan.publish(room, "before-1");
  await dan.publish(room, "before-2");
  const history = collect(carol, "message", 2, (m) => m.room === room);
  const joins = collect(carol, "member", 1, (e) => e.clientId === name("dan") && e.event === "join");
  const j = await carol.join(room, { last: 10, presence: true });
  assert.equal(j.recovered, true);
  assert.deepEqual((await history).map((m) => m.data), ["before-1", "before-2"]);
  await dan.join(room);
  await joins;
  let who;
  for (let i = 0; i < 50; i++) {
    who = await carol.presence(room);
    if (who.members.length === 2) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.deepEqual(who, { members: [name("carol"), name("dan")].sort(), truncated: false });
  assert.deepEqual(await carol.online([name("dan"), name("nobody")]), [name("dan")]);
  const live = collect(carol, "message", 1, (m) => m.room === room);
  const ack = await dan.publish(room, { live: true });
  const [m] = await live;
  assert.equal(m.offset, ack.offset);
  const left = collect(carol, "member", 1, (e) => e.event === "leave");
  await dan.leave(room);
  assert.equal((await left)[0].clientId, name("dan"));
  carol.close();
  dan.close();
});

test("after a dropped connection it resumes direct and room messages: nothing missed, nothing twice", async () => {
  const room = name("resume");
  const [erin, frank] = [await client("erin"), await client("frank")];
  await erin.join(room);
  const first = collect(erin, "message", 1);
  await frank.send(name("erin"), "d0");
  await first;
  const back = collect(erin, "welcome", 1);
  erin.dropConnection();
  // Sent while erin is away (or already back: either way, each arrives once).
  const got = collect(erin, "message", 5, () => true, 30000);
  for (const d of ["d1", "d2", "d3"]) await frank.send(name("erin"), d);
  for (const r of ["r1", "r2"]) await frank.publish(room, r);
  await back;
  const msgs = await got;
  assert.deepEqual(msgs.filter((m) => !m.room).map((m) => m.data), ["d1", "d2", "d3"]);
  assert.deepEqual(msgs.filter((m) => m.room).map((m) => m.data), ["r1", "r2"]);
  assert.ok(erin.reconnects >= 1);
  // Nothing more arrives (no duplicate).
  await assert.rejects(collect(erin, "message", 1, () => true, 800));
  // Sends made while disconnected are kept and answered after the reconnect.
  const drop = collect(frank, "welcome", 1);
  frank.dropConnection();
  const late = frank.send(name("erin"), "while-away");
  await drop;
  assert.ok((await late).offset >= 0);
  erin.close();
  frank.close();
});

test("backends publish through the gateway with an API key", { skip: !KEY && "no RTC_PUBLISH_KEY" }, async () => {
  const gina = await client("gina");
  const got = collect(gina, "message", 1);
  const r = await publishApi(URL, KEY, { to: name("gina"), id: "n-1", data: { note: 1 } });
  const [m] = await got;
  assert.equal(m.offset, r.offset);
  assert.deepEqual(m.data, { note: 1 });
  await assert.rejects(publishApi(URL, "wrong-key-000000000000", { to: "x", id: "1", data: 1 }), (e) => e.code === "unauthorized");
  gina.close();
});
