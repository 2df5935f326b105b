import BunqAPI
import Foundation

/// A context's lease as the store granted it: the holder may write the context's sessions while the lease lasts,
/// and every such write presents `fence`, which grows each time the lease changes hands. A daemon that was paused
/// or cut off past its lease presents a stale fence, and its write is refused.
public struct LeaseGrant: Sendable, Equatable {
    public let context: String
    public let fence: Int64

    public init(context: String, fence: Int64) {
        self.context = context
        self.fence = fence
    }
}

/// A daemon seen alive on the store.
public struct ClusterMember: Sendable, Equatable {
    public let instance: String
    public let egressGroup: String
    /// The unexpired leases it holds.
    public let leases: Int

    public init(instance: String, egressGroup: String, leases: Int) {
        self.instance = instance
        self.egressGroup = egressGroup
        self.leases = leases
    }
}

/// What another daemon changed in the store, as `LISTEN/NOTIFY` tells it: a context's new generation (a new
/// session or a new identity), or its removal. Names and numbers only, never a secret.
public enum StoreChange: Sendable, Equatable {
    case changed(context: String, generation: Int, by: String)
    case removed(context: String, by: String)
    /// A daemon that does not hold the context's lease asks its holder to renew it (`session.renew`), or to
    /// replace generation `invalid` that bunq refused (`session.report_invalid`).
    case renewalRequested(context: String, invalid: Int?, by: String)
    /// The notification channel was (re)connected: changes made meanwhile were missed, read everything again.
    case resync
}

/// A store shared by several daemons (PostgreSQL): membership, leases with fencing, the session-server budget of
/// each egress group, and change notifications. Every call is one transaction against the store's own clock, so
/// daemons whose clocks disagree still agree about who holds what.
public protocol ClusterStore: StateBackend {
    /// Records `instance` alive now; returns the members alive within the last `window` seconds (with the
    /// unexpired leases each holds) and how many contexts the store has.
    /// `process` names this run of the daemon: a heartbeat under an instance name another live process holds is
    /// refused (`locked`).
    func heartbeat(instance: String, process: String, egressGroup: String,
                   window: Double) async throws -> (members: [ClusterMember], contexts: Int)
    /// Every context's generation (a resync's first, cheap read).
    func generations() async throws -> [String: Int]
    /// Extends, by `seconds` from now, every unexpired lease `instance` holds; returns them.
    func renewLeases(instance: String, seconds: Double) async throws -> [LeaseGrant]
    /// Takes up to `limit` leases that nobody holds (never granted, expired or released) for `seconds`, each with a
    /// fence higher than any before it.
    func acquireLeases(instance: String, seconds: Double, limit: Int) async throws -> [LeaseGrant]
    /// Gives leases up at once (for another daemon to take); the fences stay, so no late write passes.
    func releaseLeases(instance: String, _ contexts: [String]) async throws
    /// Leaves the cluster on shutdown: every lease released, the membership ended, so others take over at once;
    /// a session-server slot it holds opens `spacing` seconds from now.
    func leave(instance: String, spacing: Double) async throws
    /// Creates a context's row unless it exists, with its lease to `instance` for `leaseSeconds` (the creator
    /// bootstraps it); nil when another daemon created it first (registration happens once per identity, by
    /// whoever holds its lease).
    func insertRegistration(_ name: String, kind: StoredContext.Kind, _ registration: IdentityRegistration,
                            by instance: String, leaseSeconds: Double) async throws -> LeaseGrant?
    /// A bootstrap step's registration, written only under the lease `fence` (`fenced` otherwise).
    func updateRegistration(_ name: String, _ registration: IdentityRegistration, fence: Int64, by instance: String) async throws
    /// A new session, written only under the lease `fence` (`fenced` otherwise) and only above the stored
    /// generation; notifies the other daemons.
    func saveSession(_ name: String, _ session: SessionInfo, generation: Int, registration: IdentityRegistration,
                     fence: Int64, by instance: String) async throws
    /// Claims the egress group's session-server slot for `hold` seconds at most: nil when granted, else the
    /// seconds until it opens.
    func claimSessionServer(egressGroup: String, instance: String, hold: Double) async throws -> Double?
    /// Ends the claimed call: the group's next call may start `spacing` seconds from now.
    func releaseSessionServer(egressGroup: String, instance: String, spacing: Double) async throws
    /// Tells the other daemons that a context was removed or created outside a lease (an OAuth completion).
    func announce(_ change: StoreChange) async throws
    /// Hands every change by any daemon to `handle` as it is committed, reconnecting by itself (then handing
    /// `.resync`), until the calling task is cancelled. Its own connection: a listener never waits on a call.
    func listen(_ handle: @escaping @Sendable (StoreChange) async -> Void) async
}
