import BunqAPI
import Foundation
import Logging
import Synchronization
import Timekeeping

/// `cluster:` — this daemon's place among several on one PostgreSQL store.
public struct ClusterSettings: Sendable, Equatable {
    /// This daemon's name among its peers (`cluster.instance`; default: the hostname).
    public let instance: String
    /// The egress IP its bunq calls leave from (`cluster.egress_group`; default: the instance). Daemons of one
    /// group share that IP's bunq budget; each further group adds one.
    public let egressGroup: String
    /// `cluster.lease_seconds`: a dead daemon's identities are taken over within this long.
    public let leaseSeconds: Double

    public init(instance: String, egressGroup: String, leaseSeconds: Double) {
        self.instance = instance
        self.egressGroup = egressGroup
        self.leaseSeconds = leaseSeconds
    }

    /// A lease lasts two thirds of the period in the store and is extended every third: it always has a third
    /// left while its holder lives, and a dead holder's lease is free at most two thirds after its last round,
    /// taken at the next round of another: within one period.
    var leaseDuration: Double { leaseSeconds * 2 / 3 }
    var roundInterval: Double { leaseSeconds / 3 }
    /// Here a lease stops counting a tenth before the store lets it go, so this daemon stops before anyone else
    /// may start.
    var localDuration: Double { leaseDuration * 0.9 }

    /// The share of `contexts` leases one member should hold: the contexts spread evenly over the egress groups
    /// alive, each group's share evenly over its members (rounded up at each step, so the shares cover all).
    public static func fairShare(contexts: Int, members: [ClusterMember], instance: String, egressGroup: String) -> Int {
        var groups = Dictionary(grouping: members, by: \.egressGroup).mapValues { Set($0.map(\.instance)) }
        groups[egressGroup, default: []].insert(instance)
        let perGroup = (contexts + groups.count - 1) / groups.count
        let inGroup = groups[egressGroup]!.count
        return (perGroup + inGroup - 1) / inGroup
    }
}

/// What `daemon.status.cluster` reports.
public struct ClusterStatus: Sendable, Equatable {
    public var instance: String
    public var egressGroup: String
    public var leasesHeld: Int
    /// As the last lease round saw them.
    public var members: [ClusterMember]
    /// False while the store does not answer (tokens are served from memory; nothing is renewed).
    public var storeReachable: Bool
}

/// Keeps this daemon's part of the cluster: a lease round every third of the lease period (membership, the
/// leases held extended, a fair share taken or given back), the other daemons' changes followed as they are
/// notified, and a full resync each lease period. It also guards each session-server call: under the context's
/// lease only, within the egress group's shared budget, and never while the store is unreachable (a session
/// that cannot be saved would spend bunq's budget for nothing).
final class Cluster: Sendable {
    let settings: ClusterSettings
    let store: any ClusterStore
    /// The session-server spacing of one egress IP (0: unlimited, no shared slot is claimed).
    let spacing: Double
    private let state: Mutex<ClusterStatus>
    private let wake = WakeSignal()
    private let logger: Logger
    /// This run of the daemon, so a second process under the same instance name is noticed.
    private let process = UUID().uuidString
    /// The monotonic clock of the rounds, the waits and the leases as held here (the registry's).
    let clock: AnyClock

    init(settings: ClusterSettings, store: any ClusterStore, clock: AnyClock, spacing: Double, logger: Logger) {
        self.settings = settings
        self.store = store
        self.clock = clock
        self.spacing = spacing
        self.logger = logger
        state = Mutex(ClusterStatus(instance: settings.instance, egressGroup: settings.egressGroup, leasesHeld: 0,
                                    members: [], storeReachable: true))
    }

    /// The cluster as the last round saw it; the leases held are the registry's to count.
    var status: ClusterStatus {
        var status = state.withLock { $0 }
        status.storeReachable = store.calls.health.reachable
        return status
    }

    /// Distinct egress groups alive: each brings one IP's session-server budget.
    var egressGroups: Int { max(1, Set(state.withLock { $0.members.map(\.egressGroup) }).count) }

    /// Asks for a lease round now (a new identity to assign).
    func poke() { wake.signal() }

    // MARK: The loops

    func run(registry: ContextRegistry, events: EventBroadcaster) async {
        await withDiscardingTaskGroup { group in
            group.addTask { await self.leaseLoop(registry, events) }
            group.addTask {
                await self.store.listen { change in await self.follow(change, registry, events) }
            }
        }
        // Leaving: every lease released, so the others take over at their next round rather than a period later.
        do {
            try await store.leave(instance: settings.instance, spacing: spacing)
        } catch {
            logger.warning("could not leave the cluster; its leases run out by themselves", metadata: ["bunq.error": "\(error)"])
        }
        await registry.dropLeases()
    }

    private func leaseLoop(_ registry: ContextRegistry, _ events: EventBroadcaster) async {
        var failures = 0
        var rounds = 0
        // One round, then a pause until the next (or a poke); the pause ends the loop when the task is cancelled,
        // and no round starts once cancelled.
        var running = !Task.isCancelled
        while running {
            var delay = settings.roundInterval
            do {
                // The first round only announces this daemon: daemons starting together see each other before
                // anyone takes a share, so the first shares are already even.
                try await round(registry, acquire: rounds > 0)
                if failures > 0 || rounds % 3 == 1 { try await resync(registry, events) }
                if rounds == 0 { delay = min(delay, 1) }
                failures = 0
                rounds += 1
            } catch {
                failures += 1
                if let error = error as? StoreError, error.code == .locked {
                    // Reachable, but this daemon must not take part: it renews nothing until the other one goes.
                    if failures == 1 { logger.error("duplicate cluster instance", metadata: ["bunq.error": "\(error.message)"]) }
                }
                // An unreachable store is logged once by the store's calls (and once when it is back).
                // Reconnect with backoff: 0.5 s, 1 s, 2 s … up to a round.
                delay = min(settings.roundInterval, 0.25 * Double(1 << min(failures, 8)))
            }
            // Leases that ran out here while no round succeeded are no longer renewed here.
            let lapsed = await registry.lapseLeases()
            if !lapsed.isEmpty, failures > 0 {
                logger.notice("leases lapsed while the store was unreachable", metadata: ["bunq.count": "\(lapsed.count)"])
            }
            running = await pause(seconds: delay)
        }
    }

    /// Waits `seconds` on the clock or until poked; false once the task is cancelled (the loop ends).
    private func pause(seconds: Double) async -> Bool {
        let clock = self.clock
        await withTaskGroup(of: Void.self) { group in
            group.addTask { try? await clock.sleep(until: clock.now + .seconds(seconds)) }
            group.addTask { [wake] in await wake.signalled() }
            await group.next()
            group.cancelAll()
        }
        return !Task.isCancelled
    }

    /// One lease round: heartbeat, extend what is held, take or give back towards the fair share.
    private func round(_ registry: ContextRegistry, acquire: Bool) async throws {
        let started = clock.now
        let instance = settings.instance
        let (members, contexts) = try await store.heartbeat(instance: instance, process: process, egressGroup: settings.egressGroup,
                                                      window: settings.leaseDuration)
        var held = try await store.renewLeases(instance: instance, seconds: settings.leaseDuration)
        let target = ClusterSettings.fairShare(contexts: contexts, members: members, instance: instance,
                                               egressGroup: settings.egressGroup)
        if acquire, held.count < target {
            held += try await store.acquireLeases(instance: instance, seconds: settings.leaseDuration, limit: target - held.count)
        }
        if held.count > target {
            // Give back the surplus that is idle here (a renewal under way, and a context being created or removed
            // here, keep their lease to the end: their writes are fenced by it).
            var surplus: [String] = []
            for grant in held where surplus.count < held.count - target {
                if await registry.mayGiveBack(grant.context) { surplus.append(grant.context) }
            }
            if !surplus.isEmpty {
                try await store.releaseLeases(instance: instance, surplus)
                held.removeAll { surplus.contains($0.context) }
            }
        }
        // Leases that went stop their renewals here in the same step.
        let taken = await registry.replaceLeases(held, until: started + .seconds(settings.localDuration), roundStarted: started)
        state.withLock { $0.members = members }
        for name in taken {
            // Taken over: first what the store has (a rotation this daemon may not have heard of), then renewed here.
            try await refresh(name, registry)
            await registry.beginRenewing(name)
        }
        if !taken.isEmpty {
            let count = await registry.leaseCount
            logger.debug("leases", metadata: ["bunq.leases_held": "\(count)", "bunq.target": "\(target)",
                                              "bunq.members": "\(members.count)"])
        }
    }

    /// Reads one context from the store: adopted when newer, followed when new here, forgotten when gone.
    @discardableResult
    private func refresh(_ name: String, _ registry: ContextRegistry, _ events: EventBroadcaster? = nil) async throws -> Bool {
        guard let stored = try await store.context(name) else {
            await registry.forget(name)
            return false
        }
        let known = await registry.generation(name)
        if known == nil {
            await registry.adoptNew(stored.record)
            return true
        }
        guard let entry = await registry.adopt(stored.record), let session = stored.session else { return false }
        events?.publish(.rotated(context: name, generation: stored.generation, expiresAt: session.expiresAt), entry)
        logger.debug("session adopted", metadata: ["bunq.context": "\(name)", "bunq.generation": "\(stored.generation)"])
        return true
    }

    /// Everything again: new contexts followed, newer sessions adopted, removed ones forgotten. Reads the
    /// generations only, then each context that changed (no token is decrypted for one that did not).
    private func resync(_ registry: ContextRegistry, _ events: EventBroadcaster) async throws {
        let known = await registry.generations  // before the read: a context created here meanwhile is not "removed"
        let stored = try await store.generations()
        for (name, generation) in stored where known[name].map({ generation > $0 }) ?? true {
            try await refresh(name, registry, events)
        }
        for name in known.keys where stored[name] == nil { await registry.forget(name) }
    }

    /// One notified change of another daemon's.
    private func follow(_ change: StoreChange, _ registry: ContextRegistry, _ events: EventBroadcaster) async {
        do {
            switch change {
            case .changed(let name, let generation, let by) where by != settings.instance:
                if let known = await registry.generation(name), known >= generation { return }
                try await refresh(name, registry, events)
                poke()  // a new context needs a holder
            case .removed(let name, let by) where by != settings.instance:
                await registry.forget(name)
            case .renewalRequested(let name, let invalid, let by) where by != settings.instance:
                guard await registry.fence(name) != nil else { return }
                if let invalid {
                    _ = await registry.sessionInvalid(name, generation: invalid)
                } else {
                    await registry.requestRenewal(name)
                }
            case .resync:
                try await resync(registry, events)
            default:
                break
            }
        } catch {
            // The next round's resync catches up.
            logger.debug("could not follow a change", metadata: ["bunq.error": "\(error)"])
        }
    }

    /// Asks whichever daemon holds the context's lease to renew it; false when the store cannot be told.
    @discardableResult
    func askHolder(_ name: String, invalid: Int? = nil) async -> Bool {
        do {
            try await store.announce(.renewalRequested(context: name, invalid: invalid, by: settings.instance))
            return true
        } catch {
            logger.warning("cannot ask the lease holder to renew", metadata: ["bunq.context": "\(name)", "bunq.error": "\(error)"])
            return false
        }
    }

    // MARK: The session-server call

    /// Before a session-server call of `name`: the lease must be held, the store reachable, and the egress
    /// group's slot free (waited for, as the group's other daemons use it).
    func beginSessionCall(_ name: String, _ registry: ContextRegistry) async throws {
        let clock = self.clock
        let deadline = clock.now + .seconds(max(120, spacing * 20))
        while true {
            guard await registry.fence(name) != nil else { throw RenewalError.lostLease(name) }
            guard spacing > 0 else { return }
            let wait: Double?
            do {
                wait = try await store.claimSessionServer(egressGroup: settings.egressGroup, instance: settings.instance,
                                                    hold: 30 + spacing)
            } catch {
                throw RenewalError(.retryable, "the state store is unreachable: no session is opened that could not be saved",
                                   code: .storeUnreachable)
            }
            guard let wait else { return }
            guard clock.now < deadline else {
                throw RenewalError(.retryable, "the egress group's session-server slot stayed taken", code: .bunq(.rateLimited))
            }
            try? await clock.sleep(until: clock.now + .seconds(min(max(wait, 0.05), 5)))
        }
    }

    /// After the call: the group's next one may start one spacing from now.
    func endSessionCall() async {
        guard spacing > 0 else { return }
        do {
            try await store.releaseSessionServer(egressGroup: settings.egressGroup, instance: settings.instance, spacing: spacing)
        } catch {
            // The claim's hold runs out by itself.
            logger.debug("could not release the session-server slot", metadata: ["bunq.error": "\(error)"])
        }
    }
}
