import type { Deployment, DeploymentRegistry, Logger } from '@llmux/shared';

/**
 * The gateway's cached view of the published deployments, by name and alias.
 * Refreshed in the background, and on a miss at most once per `minRefreshMs`,
 * so a model the controller just added is found without a restart.
 */
export class ModelCatalog {
  private byName = new Map<string, Deployment>();
  private deployments: Deployment[] = [];
  private loadedAt = 0;
  private refreshing: Promise<void> | null = null;

  constructor(
    private readonly registry: DeploymentRegistry,
    private readonly log: Logger,
    private readonly minRefreshMs = 1000,
  ) {}

  /**
   * Reloads the published deployments. An empty list does not replace a
   * loaded one: the controller always publishes at least one deployment, so
   * an empty hash means Redis restarted without persistence and the list is
   * not published again yet; the gateway keeps serving what it knew.
   */
  refresh(): Promise<void> {
    this.refreshing ??= this.registry
      .load()
      .then((map) => {
        if (map.size === 0 && this.deployments.length > 0) {
          this.loadedAt = Date.now();
          return;
        }
        const byName = new Map<string, Deployment>();
        for (const d of map.values()) {
          byName.set(d.name, d);
          for (const a of d.aliases) byName.set(a, d);
        }
        this.byName = byName;
        this.deployments = [...map.values()];
        this.loadedAt = Date.now();
      })
      .finally(() => {
        this.refreshing = null;
      });
    return this.refreshing;
  }

  /**
   * The deployment serving `name`, refreshing once if it is unknown and the
   * cache is not fresh. Rejects when that refresh fails: whether the model
   * exists cannot be told then.
   */
  async resolve(name: string): Promise<Deployment | undefined> {
    const hit = this.byName.get(name);
    if (hit || Date.now() - this.loadedAt < this.minRefreshMs) return hit;
    try {
      await this.refresh();
    } catch (err) {
      this.log.warn({ err }, 'could not refresh deployments');
      throw err;
    }
    return this.byName.get(name);
  }

  /** The cached deployment serving `name`, without any refresh. */
  get(name: string): Deployment | undefined {
    return this.byName.get(name);
  }

  list(): Deployment[] {
    return this.deployments;
  }
}
