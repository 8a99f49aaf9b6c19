// The same load as rtc-loadtest's direct pattern: N clients split over the nodes, each sending a
// message every INTERVAL ms to a peer; latency from the intended send time; prints one JSON line.
const { io } = require("socket.io-client");

const [ports, n, intervalMs, seconds] = [process.argv[2].split(","), Number(process.argv[3]), Number(process.argv[4]), Number(process.argv[5])];
const ids = Array.from({ length: n }, (_, k) => `sio-${k}`);
const lat = [];
let sent = 0, acked = 0, delivered = 0, connected = 0;
const seen = new Set();
let dup = 0;
const sockets = [];
const start = () => {
  const t0 = Date.now();
  sockets.forEach((s, k) => {
    let seq = 0;
    const offset = (k * 7919) % intervalMs;
    const tick = () => {
      if (Date.now() - t0 > seconds * 1000) return;
      seq += 1;
      const intended = t0 + offset + (seq - 1) * intervalMs;
      const to = ids[(k + 1 + (seq * 7919) % (n - 1)) % n];
      sent += 1;
      s.emit("send", { to, id: `${k}:${seq}`, data: { at: intended } }, () => { acked += 1; });
      setTimeout(tick, Math.max(0, t0 + offset + seq * intervalMs - Date.now()));
    };
    setTimeout(tick, offset);
  });
  setTimeout(() => {
    lat.sort((a, b) => a - b);
    const q = (p) => lat.length ? lat[Math.min(lat.length - 1, Math.floor(p * lat.length))] : 0;
    console.log(JSON.stringify({ clients: connected, sent, acked, delivered, duplicated: dup, lost: acked - delivered,
      msgs_per_sec: delivered / seconds, p50_ms: q(0.5), p99_ms: q(0.99) }));
    process.exit(0);
  }, seconds * 1000 + 5000);
};
setTimeout(() => { if (connected < n) { console.error(`only ${connected} of ${n} clients connected`); process.exit(1); } }, 120000);
ids.forEach((id, k) => {
  const s = io(`http://127.0.0.1:${ports[k % ports.length]}`, { transports: ["websocket"], query: { clientId: id }, reconnection: true });
  s.on("connect", () => { connected += 1; if (connected === n) { console.error(`${n} clients connected`); start(); } });
  s.on("msg", (m) => {
    const key = `${id}|${m.id}`;
    if (seen.has(key)) dup += 1; else { seen.add(key); delivered += 1; lat.push(Date.now() - m.data.at); }
  });
  sockets.push(s);
});
