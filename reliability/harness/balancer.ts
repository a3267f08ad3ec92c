// A TCP round-robin balancer: what an ingress or a Kubernetes Service is in production. The
// outside provider calls back through it, so a callback reaches whichever provider replica
// is alive, not the one that happened to place the call.
import { createConnection, createServer, type Server, type Socket } from "node:net";

export interface Balancer {
  port: number;
  url: string;
  close(): Promise<void>;
}

export async function startBalancer(backends: () => number[], port = 0): Promise<Balancer> {
  let next = 0;
  const sockets = new Set<Socket>();
  const server: Server = createServer((client) => {
    sockets.add(client);
    client.once("close", () => sockets.delete(client));
    client.pause();
    const ports = backends();
    // Try each backend once, starting with the next in turn; a refused connection moves on.
    const attempt = (tries: number) => {
      if (tries >= ports.length) return client.destroy();
      const target = ports[next++ % ports.length];
      const upstream = createConnection({ host: "127.0.0.1", port: target });
      sockets.add(upstream);
      upstream.once("close", () => sockets.delete(upstream));
      let connected = false;
      upstream.on("error", () => (connected ? client.destroy() : attempt(tries + 1)));
      upstream.once("connect", () => {
        connected = true;
        client.on("error", () => upstream.destroy());
        client.pipe(upstream).pipe(client);
        client.resume();
      });
    };
    attempt(0);
  });
  await new Promise<void>((resolve) => server.listen(port, "127.0.0.1", resolve));
  const bound = (server.address() as { port: number }).port;
  return {
    port: bound,
    url: `http://127.0.0.1:${bound}`,
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise((r) => server.close(r));
    },
  };
}
