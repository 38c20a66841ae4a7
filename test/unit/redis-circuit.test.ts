import { EventEmitter } from 'node:events';
import { connect, createServer, type AddressInfo, type Socket } from 'node:net';
import { expect } from 'chai';
import { createLogger, ServiceUnavailableError, type Redis } from '@llmux/shared';
import { RedisCircuit } from '@llmux/gateway';

/** A connection stand-in: always ready, with a socket whose 'data' events the test emits, and a PING that never answers. */
function fakeRedis(): { redis: Redis; socket: EventEmitter } {
  const socket = new EventEmitter();
  const conn = Object.assign(new EventEmitter(), {
    status: 'ready',
    stream: socket,
    ping: () => new Promise(() => {}),
  });
  return { redis: conn as unknown as Redis, socket };
}

/** Resolves with `value` after `ms`; meanwhile emits socket data every `every` ms when given (answers to other commands). */
function slowOp<T>(value: T, ms: number, socket?: EventEmitter, every = 10): () => Promise<T> {
  return () =>
    new Promise<T>((resolve) => {
      const tick = socket ? setInterval(() => socket.emit('data', Buffer.from('+OK\r\n')), every) : null;
      setTimeout(() => {
        if (tick) clearInterval(tick);
        resolve(value);
      }, ms);
    });
}

describe('RedisCircuit time limit', () => {
  const log = createLogger('test', 'silent');

  it('trips when Redis sends nothing for the whole limit', async () => {
    const { redis } = fakeRedis();
    const circuit = new RedisCircuit(redis, log, { timeoutMs: 40 });
    let err: unknown = null;
    await circuit.guard(slowOp('late', 200), 'enqueue').catch((e: unknown) => (err = e));
    expect(err).to.be.instanceOf(ServiceUnavailableError);
    expect(circuit.isClosed).to.equal(false);
    circuit.close();
  });

  it('waits on while the connection keeps receiving answers (the command is behind others, Redis is up)', async () => {
    const { redis, socket } = fakeRedis();
    const circuit = new RedisCircuit(redis, log, { timeoutMs: 40 });
    expect(await circuit.guard(slowOp('answered', 120, socket), 'enqueue')).to.equal('answered');
    expect(circuit.isClosed).to.equal(true);
    circuit.close();
  });

  it('still trips past five times the limit, answers or not', async () => {
    const { redis, socket } = fakeRedis();
    const circuit = new RedisCircuit(redis, log, { timeoutMs: 30 });
    let err: unknown = null;
    const t0 = performance.now();
    await circuit.guard(slowOp('never in time', 600, socket), 'enqueue').catch((e: unknown) => (err = e));
    expect(err).to.be.instanceOf(ServiceUnavailableError);
    expect(performance.now() - t0).to.be.below(600);
    circuit.close();
  });

  it('reads an answer that arrived while the loop was busy before the timer can fail the operation', async () => {
    const { redis } = fakeRedis();
    const circuit = new RedisCircuit(redis, log, { timeoutMs: 20 });
    // A real socket pair: the answer waits in the kernel while the loop is blocked past the limit.
    const server = createServer();
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const accepted = new Promise<Socket>((r) => server.once('connection', r));
    const client = connect((server.address() as AddressInfo).port, '127.0.0.1');
    await new Promise((r) => client.once('connect', r));
    const peer = await accepted;
    const answer = new Promise<string>((resolve) => client.once('data', (b: Buffer) => resolve(b.toString())));
    const guarded = circuit.guard(() => answer, 'enqueue');
    peer.write('read');
    // Blocked past the limit: when the loop runs again the timer is due before the socket is read.
    const until = performance.now() + 60;
    while (performance.now() < until);
    try {
      expect(await guarded).to.equal('read');
    } finally {
      client.destroy();
      peer.destroy();
      server.close();
      circuit.close();
    }
  });
});
