// Compile-only check of src/index.d.ts the way a TypeScript application uses the client:
// `tsc --noEmit --strict` (scripts/test.sh) must accept every line, and refuse every line
// after an expect-error marker (tsc fails on a marker with nothing to refuse).
import { Backoff, RtcClient, RtcError, publishApi } from "../src/index.js";
import type { Events, Joined, Message, State, Welcome } from "../src/index.js";

export async function chat(url: string, apiKey: string): Promise<void> {
  const alice = new RtcClient({
    url,
    clientId: "alice",
    token: async () => "jwt",
    resumeOffset: 41,
    backoffInitialMs: 100,
    backoffMaxMs: 5000,
  });
  const off: () => void = alice.on("message", (m: Message) => {
    const text: string = `${m.from}/${m.id} at ${m.offset} in ${m.room ?? "direct"}`;
    void text;
  });
  alice.on("state", (s: State) => void s);
  alice.on("error", (e: RtcError) => void [e.code, e.retryable]);
  alice.on("member", (e) => {
    const ev: "join" | "leave" = e.event;
    void [ev, e.clientId, e.room];
  });
  // @ts-expect-error: not an event of the client
  alice.on("nonsense", () => {});
  // @ts-expect-error: a welcome is not a message
  alice.on("welcome", (m: Message) => void m);
  off();

  const w: Welcome = await alice.connect();
  const node: string = w.node;
  const sent: number = (await alice.send("bob", { text: "hi" })).offset;
  const posted: number = (await alice.publish("lobby", "hello")).offset;
  const j: Joined = await alice.join("lobby", { last: 10, presence: true });
  const left: number | undefined = (await alice.leave("lobby")).offset;
  const { members, truncated } = await alice.presence("lobby");
  const online: string[] = await alice.online(["bob", "carol"]);
  await alice.ping();
  // @ts-expect-error: a direct message needs a recipient and data
  await alice.send("bob");
  // @ts-expect-error: read-only
  alice.state = "open";
  const resumed: Map<string, number> = alice.roomOffsets;
  const at: number | null = alice.offset;
  void [node, sent, posted, j.recovered, left, members, truncated satisfies boolean, online, resumed, at];
  alice.dropConnection();
  alice.close();

  // The publish API: one message gives its offset, a batch a result per message.
  const one: number = (await publishApi(url, apiKey, { to: "bob", id: "n-1", data: 1 })).offset;
  const batch = await publishApi(url, apiKey, {
    messages: [
      { room: "lobby", id: "n-2", data: 2 },
      { to: "bob", id: "n-3", data: 3, from: "billing" },
    ],
  });
  for (const r of batch.results) {
    const ok: boolean = r.offset !== undefined || (r.error !== undefined && r.retryable === true);
    void ok;
  }
  // @ts-expect-error: a batch has no single offset
  void (await publishApi(url, apiKey, { messages: [] })).offset;
  // @ts-expect-error: a message goes to a client or a room
  await publishApi(url, apiKey, { id: "n-4", data: 4 });
  void one;

  const b = new Backoff(50, 1000);
  const wait: number = b.next();
  b.reset();
  const kinds: Array<keyof Events> = ["welcome", "message", "joined", "member", "state", "error"];
  void [wait, kinds];
}
