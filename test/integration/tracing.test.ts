import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { EventEmitter } from 'node:events';
import { expect } from 'chai';
import { TestSystem } from '../helpers/system.js';
import { post } from '../helpers/http.js';

interface OtlpSpan {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
  startTimeUnixNano: string;
  endTimeUnixNano: string;
  attributes?: { key: string; value: { stringValue?: string; intValue?: string | number; boolValue?: boolean } }[];
}
interface OtlpBody {
  resourceSpans: {
    resource: { attributes: { key: string; value: { stringValue?: string } }[] };
    scopeSpans: { spans: OtlpSpan[] }[];
  }[];
}
type Received = OtlpSpan & { service: string };

/**
 * A minimal OTLP/HTTP (JSON) trace receiver: what a collector would get from
 * the services, kept in memory for the test.
 */
class OtlpReceiver extends EventEmitter {
  readonly spans: Received[] = [];
  private server: Server | null = null;
  url = '';

  async start(): Promise<void> {
    this.server = createServer((req, res) => {
      let body = '';
      req.setEncoding('utf8');
      req.on('data', (c: string) => (body += c));
      req.on('end', () => {
        if (req.method === 'POST' && req.url === '/v1/traces') {
          const parsed = JSON.parse(body) as OtlpBody;
          for (const rs of parsed.resourceSpans) {
            const service = rs.resource.attributes.find((a) => a.key === 'service.name')?.value.stringValue ?? '';
            for (const ss of rs.scopeSpans) for (const s of ss.spans) this.spans.push({ ...s, service });
          }
          this.emit('spans');
        }
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end('{}');
      });
    });
    await new Promise<void>((r) => this.server!.listen(0, '127.0.0.1', r));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  /** Resolves once spans matching `done` have arrived. */
  async until(done: (spans: Received[]) => boolean): Promise<void> {
    while (!done(this.spans)) await new Promise((r) => this.once('spans', r));
  }

  async stop(): Promise<void> {
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
  }
}

const attr = (s: OtlpSpan, key: string) => {
  const v = s.attributes?.find((a) => a.key === key)?.value;
  return v?.stringValue ?? v?.intValue ?? v?.boolValue;
};

describe('tracing across gateway and worker (real processes, OTLP/HTTP)', function () {
  let sys: TestSystem;
  const receiver = new OtlpReceiver();

  before(async function () {
    await receiver.start();
    const otel = { OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url, OTEL_BSP_SCHEDULE_DELAY: '50' };
    sys = await TestSystem.start({
      deployments: { models: [{ name: 'sim', engine: { type: 'sim', ttftMs: 5, itlMs: 2 }, concurrency: 4 }] },
      workers: [{ env: otel }],
      gatewayEnv: otel,
    });
  });

  after(async () => {
    await sys?.stop();
    await receiver.stop();
  });

  it('joins admit, queue wait, claim, generation and relay of one request in one trace', async () => {
    const r = await post(`${sys.url}/v1/chat/completions`, {
      model: 'sim',
      messages: [{ role: 'user', content: 'Once' }],
      max_tokens: 5,
      stream: true,
    });
    expect(r.status).to.equal(200);
    const rid = r.headers.get('x-request-id')!;
    const names = ['llmux.request', 'llmux.admit', 'llmux.relay', 'llmux.queue_wait', 'llmux.claim', 'llmux.generate'];
    const ofRequest = (spans: Received[]) => {
      const root = spans.find((s) => s.name === 'llmux.request' && attr(s, 'llmux.request_id') === rid);
      return root ? spans.filter((s) => s.traceId === root.traceId) : [];
    };
    await receiver.until((spans) => names.every((n) => ofRequest(spans).some((s) => s.name === n)));
    const trace = ofRequest(receiver.spans);
    const root = trace.find((s) => s.name === 'llmux.request')!;
    expect(root.parentSpanId ?? '', 'the request span is the root').to.equal('');
    expect(root.service).to.equal('llmux-gateway');
    for (const n of names.slice(1)) {
      const s = trace.find((x) => x.name === n)!;
      expect(s.parentSpanId, `${n} is a child of the request span`).to.equal(root.spanId);
    }
    const byName = (n: string) => trace.find((s) => s.name === n)!;
    for (const n of ['llmux.queue_wait', 'llmux.claim', 'llmux.generate']) expect(byName(n).service).to.equal('llmux-worker');
    expect(Number(attr(byName('llmux.generate'), 'llmux.generated_tokens'))).to.equal(5);
    // The phases follow each other in time: queue wait ends before generation starts.
    const ns = (n: string, edge: 'startTimeUnixNano' | 'endTimeUnixNano') => BigInt(byName(n)[edge]);
    expect(ns('llmux.queue_wait', 'endTimeUnixNano') <= ns('llmux.generate', 'startTimeUnixNano')).to.equal(true);
    expect(ns('llmux.request', 'startTimeUnixNano') <= ns('llmux.queue_wait', 'startTimeUnixNano')).to.equal(true);
  });
});
