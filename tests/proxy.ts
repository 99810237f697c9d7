/**
 * A TCP proxy on loopback that causes network faults for real: it forwards to a server, or
 * accepts and never answers, or closes at once, or resets, or adds latency and splits every
 * chunk into single bytes.
 */
import { createServer, connect, type Server, type Socket } from "node:net";

export type ProxyMode = "forward" | "blackhole" | "close" | "reset";

export interface ProxyOptions {
  mode?: ProxyMode;
  /** Delay added to every chunk, each direction. */
  latencyMs?: number;
  /** Write each byte as its own segment. */
  fragment?: boolean;
}

const pause = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

export class FaultProxy {
  readonly mode: ProxyMode;
  /** How many connections clients opened: the measure of a reconnect stampede. */
  accepted = 0;
  private readonly sockets = new Set<Socket>();

  private constructor(private readonly server: Server, readonly port: number, private readonly target: { host: string; port: number } | undefined, private readonly options: ProxyOptions) {
    this.mode = options.mode ?? "forward";
  }

  static start(target: { host: string; port: number } | undefined, options: ProxyOptions = {}): Promise<FaultProxy> {
    return new Promise((resolve, reject) => {
      let proxy: FaultProxy;
      const server = createServer((client) => proxy.accept(client));
      server.once("error", reject);
      server.listen(0, "127.0.0.1", () => {
        const address = server.address();
        if (typeof address !== "object" || !address) return reject(new Error("no address"));
        proxy = new FaultProxy(server, address.port, target, options);
        resolve(proxy);
      });
    });
  }

  private accept(client: Socket): void {
    this.accepted++;
    this.sockets.add(client);
    client.on("close", () => this.sockets.delete(client));
    client.on("error", () => {});
    if (this.mode === "blackhole") return;
    if (this.mode === "close") return void client.end();
    if (this.mode === "reset") return void client.resetAndDestroy();
    if (!this.target) throw new Error("forward mode needs a target");
    const upstream = connect(this.target.port, this.target.host);
    this.sockets.add(upstream);
    upstream.on("close", () => this.sockets.delete(upstream));
    upstream.on("error", () => client.destroy());
    client.on("close", () => upstream.destroy());
    upstream.on("close", () => client.destroy());
    this.relay(client, upstream);
    this.relay(upstream, client);
  }

  /** Copy from one socket to the other, in order, slowed and split as configured. */
  private relay(from: Socket, to: Socket): void {
    const { latencyMs = 0, fragment = false } = this.options;
    if (!latencyMs && !fragment) {
      from.pipe(to);
      return;
    }
    to.setNoDelay(true);
    let queue = Promise.resolve();
    from.on("data", (chunk: Buffer) => {
      queue = queue.then(async () => {
        if (latencyMs) await pause(latencyMs);
        if (!fragment) return void to.write(chunk);
        for (const byte of chunk) {
          if (to.destroyed) return;
          to.write(Buffer.of(byte));
          await new Promise((resolve) => setImmediate(resolve));
        }
      });
    });
    from.on("end", () => void queue.then(() => to.end()));
  }

  /** Stop carrying anything, leaving every connection open: a network that went silent. */
  freeze(): void {
    for (const socket of this.sockets) socket.pause();
  }

  /** Drop every open connection, as a network cut would. */
  cut(): void {
    for (const socket of this.sockets) socket.destroy();
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise((resolve) => this.server.close(resolve));
  }
}
