// The cluster panel: every service instance the edge knows of, grouped by service,
// with its state and load. Polls GET /api/cluster once a second while the tab is
// visible (the next poll is scheduled only after the previous one finished), keeps
// the last good table on screen when a poll fails and says so in a status line.
// While the live channel `cluster` is subscribed, state changes arrive as `member`
// events and are shown at once; the table is read anew on every (re)subscription
// and polled only every 5 s for the load figures.
import { useEffect, useState } from 'react';
import {
  ApiError,
  fetchCluster,
  INSTANCE_STATES,
  type ClusterInfo,
  type ClusterInstance,
  type KnownInstanceState,
} from './api';
import { live, type LiveEvent } from './live';

/** Pause between the end of one poll and the start of the next. */
const POLL_MS = 1000;
/** Pause after a 404: this edge has no cluster view (yet); ask again now and then. */
const UNAVAILABLE_POLL_MS = 10_000;
/** Longest pause a 503's Retry-After may ask for. */
const MAX_RETRY_MS = 10_000;
/** Pause between polls while member events arrive live (they carry no load figures). */
const LIVE_POLL_MS = 5000;
/** A table older than this is dimmed ... */
const STALE_MS = 5000;
/** ... or this, while member events keep its states current. */
const LIVE_STALE_MS = 3 * LIVE_POLL_MS;
const CLUSTER_CHANNEL = 'cluster';

const PLACEHOLDER = '—';
const COLUMNS = ['Instance', 'State', 'Address', 'Version', 'Uptime', 'Heartbeat age', 'In flight', 'RPS'];

const byName = new Intl.Collator(undefined, { numeric: true }).compare;

interface ServiceGroup {
  service: string;
  instances: ClusterInstance[];
  live: number;
}

function groupByService(instances: ClusterInstance[]): ServiceGroup[] {
  const groups = new Map<string, ClusterInstance[]>();
  for (const instance of instances) {
    const list = groups.get(instance.service);
    if (list) list.push(instance);
    else groups.set(instance.service, [instance]);
  }
  return [...groups.entries()]
    .sort(([a], [b]) => byName(a, b))
    .map(([service, list]) => ({
      service,
      instances: list.sort((a, b) => byName(a.instance, b.instance)),
      live: list.filter((i) => i.state !== 'dead').length,
    }));
}

function isKnownState(state: string): state is KnownInstanceState {
  return (INSTANCE_STATES as readonly string[]).includes(state);
}

function formatUptime(seconds: number | null): string {
  if (seconds === null) return PLACEHOLDER;
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86_400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86_400)}d ${Math.floor((s % 86_400) / 3600)}h`;
}

function formatAge(ms: number | null): string {
  if (ms === null) return PLACEHOLDER;
  if (ms < 1000) return `${Math.max(0, Math.round(ms))} ms`;
  return `${(ms / 1000).toFixed(1)} s`;
}

function formatCount(value: number | null): string {
  return value === null ? PLACEHOLDER : String(Math.round(value));
}

function formatRps(value: number | null): string {
  return value === null ? PLACEHOLDER : value.toFixed(1);
}

/** The status line for a failed poll, and how long to wait before the next one. */
function describeFailure(err: unknown): { message: string; retryMs: number } {
  if (err instanceof ApiError) {
    if (err.status === 404) {
      return {
        message: 'Cluster view unavailable: this edge does not offer /api/cluster.',
        retryMs: UNAVAILABLE_POLL_MS,
      };
    }
    const retryMs = err.retryAfter === null ? POLL_MS : Math.min(MAX_RETRY_MS, Math.max(POLL_MS, err.retryAfter * 1000));
    return { message: `Could not update the cluster view: ${err.message}`, retryMs };
  }
  return { message: 'Could not update the cluster view.', retryMs: POLL_MS };
}

/**
 * The table after a live `member` event: `left` removes the instance, `joined` and
 * `changed` set its state and address (adding the row when it is new). An event that
 * is not understood changes nothing.
 */
export function applyMember(cluster: ClusterInfo, event: LiveEvent): ClusterInfo {
  const { service, instance, state, endpoint, change } = event.data;
  if (event.event !== 'member' || typeof service !== 'string' || typeof instance !== 'string') return cluster;
  if (service === '' || instance === '') return cluster;
  const same = (i: ClusterInstance) => i.service === service && i.instance === instance;
  if (change === 'left') return { ...cluster, instances: cluster.instances.filter((i) => !same(i)) };
  if (typeof state !== 'string' || state === '') return cluster;
  const address = typeof endpoint === 'string' && endpoint !== '' ? endpoint : null;
  const known = cluster.instances.find(same);
  const updated: ClusterInstance = known
    ? { ...known, state, address: address ?? known.address }
    : {
        service,
        instance,
        state,
        address,
        version: null,
        uptimeS: null,
        heartbeatAgeMs: null,
        inFlight: null,
        rps: null,
      };
  return {
    ...cluster,
    instances: known ? cluster.instances.map((i) => (same(i) ? updated : i)) : [...cluster.instances, updated],
  };
}

function StateBadge({ state }: { state: string }) {
  const tone = isKnownState(state) ? state : 'unknown';
  // The word is the information; the colour only repeats it.
  return <span className={`badge badge-${tone}`}>{state}</span>;
}

function InstanceRow({ instance }: { instance: ClusterInstance }) {
  return (
    <tr
      data-testid="instance-row"
      data-service={instance.service}
      data-instance={instance.instance}
      data-state={instance.state}
      data-uptime-s={instance.uptimeS ?? undefined}
      className={instance.state === 'dead' ? 'instance-dead' : undefined}
    >
      <th scope="row">{instance.instance}</th>
      <td>
        <StateBadge state={instance.state} />
      </td>
      <td className="mono">{instance.address ?? PLACEHOLDER}</td>
      <td>{instance.version ?? PLACEHOLDER}</td>
      <td className="num">{formatUptime(instance.uptimeS)}</td>
      <td className="num">{formatAge(instance.heartbeatAgeMs)}</td>
      <td className="num">{formatCount(instance.inFlight)}</td>
      <td className="num">{formatRps(instance.rps)}</td>
    </tr>
  );
}

function ClusterTable({ cluster, stale }: { cluster: ClusterInfo; stale: boolean }) {
  const groups = groupByService(cluster.instances);
  return (
    <div className="table-scroll" tabIndex={0} aria-labelledby="cluster-title">
      <table className="cluster-table" data-stale={stale ? 'true' : undefined}>
        <thead>
          <tr>
            {COLUMNS.map((name) => (
              <th key={name} scope="col">
                {name}
              </th>
            ))}
          </tr>
        </thead>
        {groups.length === 0 ? (
          <tbody>
            <tr>
              <td colSpan={COLUMNS.length} className="empty">
                No service instances are registered.
              </td>
            </tr>
          </tbody>
        ) : (
          groups.map((group) => (
            <tbody key={group.service} data-service={group.service}>
              <tr className="group">
                <th scope="rowgroup" colSpan={COLUMNS.length}>
                  <span className="group-name">{group.service}</span>{' '}
                  <span className="group-count">
                    {group.live} of {group.instances.length} live
                  </span>
                </th>
              </tr>
              {group.instances.map((instance) => (
                <InstanceRow key={instance.instance} instance={instance} />
              ))}
            </tbody>
          ))
        )}
      </table>
    </div>
  );
}

function HealthLine({ cluster }: { cluster: ClusterInfo }) {
  if (cluster.health.length === 0) return null;
  return (
    <p className="cluster-health">
      Health registry:{' '}
      {cluster.health.map((h, i) => (
        <span key={i}>
          {i > 0 ? ', ' : ''}
          {h.instance && h.address ? `${h.instance} (${h.address})` : (h.instance ?? h.address)}{' '}
          <span className={h.reachable ? 'reach-ok' : 'reach-bad'}>{h.reachable ? 'reachable' : 'unreachable'}</span>
        </span>
      ))}
    </p>
  );
}

export function Cluster() {
  const [cluster, setCluster] = useState<ClusterInfo | null>(null);
  const [updatedAt, setUpdatedAt] = useState<number | null>(null);
  const [error, setError] = useState('');
  const [now, setNow] = useState(() => Date.now());
  const [liveMode, setLiveMode] = useState(false);

  useEffect(() => {
    let stopped = false;
    let inFlight = false;
    // A (re)subscription came while a poll was in flight: that answer may predate it.
    let readAgain = false;
    let pollTimer: number | undefined;
    let clockTimer: number | undefined;
    const controller = new AbortController();

    const schedule = (ms: number) => {
      if (stopped || document.hidden) return;
      pollTimer = window.setTimeout(() => void poll(), ms);
    };

    const poll = async () => {
      pollTimer = undefined;
      if (stopped || document.hidden || inFlight) return;
      inFlight = true;
      readAgain = false;
      let next = live.isSubscribed(CLUSTER_CHANNEL) ? LIVE_POLL_MS : POLL_MS;
      try {
        const answer = await fetchCluster(controller.signal);
        if (stopped) return;
        const at = Date.now();
        setCluster(answer);
        setUpdatedAt(at);
        setNow(at);
        setError('');
      } catch (err) {
        if (stopped) return;
        // Keep the last good table; only the status line changes. No console output:
        // a failed poll is a state of the cluster, not a fault of the page.
        const failure = describeFailure(err);
        setError(failure.message);
        setNow(Date.now());
        next = failure.retryMs;
      } finally {
        inFlight = false;
      }
      schedule(readAgain ? 0 : next);
    };

    const stopChannel = live.subscribe(CLUSTER_CHANNEL, {
      onSubscribed: () => {
        setLiveMode(true);
        // Members may have changed while nothing came: read the whole table now.
        if (inFlight) {
          readAgain = true;
        } else if (!document.hidden) {
          window.clearTimeout(pollTimer);
          void poll();
        }
      },
      onEvent: (event) => setCluster((prev) => (prev ? applyMember(prev, event) : prev)),
      onRefused: () => setLiveMode(false),
    });
    const stopStatus = live.subscribeStatus(() => {
      if (!live.isLive()) setLiveMode(false);
    });

    const startClock = () => {
      if (clockTimer === undefined) clockTimer = window.setInterval(() => setNow(Date.now()), 1000);
    };
    const stopClock = () => {
      window.clearInterval(clockTimer);
      clockTimer = undefined;
    };

    const onVisibilityChange = () => {
      if (document.hidden) {
        window.clearTimeout(pollTimer);
        pollTimer = undefined;
        stopClock();
      } else {
        startClock();
        setNow(Date.now());
        // A poll still in flight schedules the next one itself when it ends.
        if (pollTimer === undefined && !inFlight) void poll();
      }
    };

    document.addEventListener('visibilitychange', onVisibilityChange);
    if (!document.hidden) {
      startClock();
      void poll();
    }
    return () => {
      stopped = true;
      stopChannel();
      stopStatus();
      document.removeEventListener('visibilitychange', onVisibilityChange);
      window.clearTimeout(pollTimer);
      stopClock();
      controller.abort();
    };
  }, []);

  const ageS = updatedAt === null ? null : Math.max(0, Math.floor((now - updatedAt) / 1000));
  const stale = updatedAt !== null && now - updatedAt > (liveMode ? LIVE_STALE_MS : STALE_MS);

  return (
    <section
      className="card cluster"
      data-testid="cluster"
      data-live={liveMode || undefined}
      aria-labelledby="cluster-title"
    >
      <header className="cluster-header">
        <h2 id="cluster-title">Cluster</h2>
        <p className="cluster-updated" data-testid="cluster-updated">
          {ageS === null ? (error ? '' : 'loading…') : `updated ${ageS}s ago`}
        </p>
      </header>

      <p className="cluster-error" role="status" data-testid="cluster-error">
        {error}
      </p>

      {cluster ? (
        <>
          <ClusterTable cluster={cluster} stale={stale} />
          <HealthLine cluster={cluster} />
        </>
      ) : null}
    </section>
  );
}
