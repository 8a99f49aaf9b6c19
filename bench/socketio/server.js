// One Socket.IO node with the Redis adapter. A client joins a room named after its clientId;
// `send {to, id, data}` is emitted to that room (on whichever node holds it) and acked.
const { createServer } = require("http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

const port = Number(process.argv[2]);
const redisUrl = process.argv[3];

(async () => {
  const pub = createClient({ url: redisUrl });
  const sub = pub.duplicate();
  await Promise.all([pub.connect(), sub.connect()]);
  const http = createServer();
  const io = new Server(http, { adapter: createAdapter(pub, sub), transports: ["websocket"], pingInterval: 30000 });
  io.on("connection", (socket) => {
    const me = socket.handshake.query.clientId;
    socket.join(me);
    socket.on("send", (m, ack) => {
      io.to(m.to).emit("msg", { from: me, id: m.id, data: m.data });
      if (ack) ack({ id: m.id });
    });
  });
  http.listen(port, "127.0.0.1", () => console.log(`socket.io node on ${port}`));
})();
