import BunqAPI
import Foundation
import Timekeeping

/// A cluster daemon's claim on a context, as held here: its fence (the store's token for writes under it) and
/// the moment it stops counting on this daemon's monotonic clock. That moment comes before the store's own
/// expiry of the lease, so a daemon that was paused (SIGSTOP, a VM freeze) or cut off finds its leases gone when
/// it resumes, before it calls bunq, whatever its wall clock says; the store's fencing refuses whatever write
/// still slips through.
struct Lease: Sendable {
    let fence: Int64
    let until: AnyClock.Instant
    /// When it was granted outside a round (a context created here), so a round already under way keeps it.
    let grantedAt: AnyClock.Instant?
}

/// The leases this daemon holds, kept with the contexts they are on: a lease round replaces them and starts or
/// stops the renewals here in the same step, so the schedule never disagrees with the leases.
extension ContextRegistry {
    /// The fence of the context's lease while it is held here; nil otherwise (and always nil alone on a store).
    func fence(_ name: String) -> Int64? {
        guard let lease = leases[name], lease.until > clock.now else { return nil }
        return lease.fence
    }

    /// Whether this daemon renews the context: alone on a store always, in a cluster while it holds the lease.
    func holdsLease(_ name: String) -> Bool { fencing == nil || fence(name) != nil }

    /// The leases held here now.
    var leaseCount: Int {
        let now = clock.now
        return leases.values.filter { $0.until > now }.count
    }

    /// Replaces the leases by those of a round that started at `roundStarted`, each valid here until `until`. A
    /// lease granted since the round started (a context created meanwhile) stays: the round could not see it.
    /// Contexts whose lease went stop being renewed here at once; returns the contexts newly held, which the
    /// caller brings up to date from the store before `beginRenewing` them.
    func replaceLeases(_ grants: [LeaseGrant], until: AnyClock.Instant, roundStarted: AnyClock.Instant) -> [String] {
        let before = Set(heldLeaseNames)
        var next = Dictionary(grants.map { ($0.context, Lease(fence: $0.fence, until: until, grantedAt: nil)) },
                              uniquingKeysWith: { a, _ in a })
        for (name, lease) in leases where next[name] == nil {
            if let grantedAt = lease.grantedAt, grantedAt >= roundStarted { next[name] = lease }
        }
        leases = next
        let after = Set(heldLeaseNames)
        for name in before.subtracting(after) { planner.setHeld(name, false, now: now) }
        wake.signal()
        return after.subtracting(before).sorted()
    }

    /// Renews a context here from now on (its lease was just taken and its state read from the store).
    func beginRenewing(_ name: String) {
        planner.setHeld(name, true, now: now)
        wake.signal()
    }

    /// The contexts still renewed here whose lease has run out on this daemon's clock: no longer renewed here.
    func lapseLeases() -> [String] {
        let held = Set(heldLeaseNames)
        let lapsed = planner.heldNames.filter { !held.contains($0) }
        for name in lapsed { planner.setHeld(name, false, now: now) }
        if !lapsed.isEmpty { wake.signal() }
        return lapsed
    }

    /// Every lease let go (leaving the cluster).
    func dropLeases() { leases = [:] }

    private var heldLeaseNames: [String] {
        let now = clock.now
        return leases.compactMap { $0.value.until > now ? $0.key : nil }
    }

    /// Creates the context's row with its lease to this daemon; nil when another daemon created it first.
    func insertLeased(_ name: String, _ kind: StoredContext.Kind, _ registration: IdentityRegistration,
                      _ fencing: Fencing) async throws -> LeaseGrant? {
        let started = clock.now
        guard let grant = try await fencing.store.insertRegistration(name, kind: kind, registration, by: fencing.instance,
                                                                    leaseSeconds: fencing.leaseDuration) else { return nil }
        leases[name] = Lease(fence: grant.fence, until: started + .seconds(fencing.localDuration), grantedAt: clock.now)
        return grant
    }

    /// Whether this daemon may give the context's lease back now: not while a renewal is under way (it keeps its
    /// lease to the end), nor while the context is being created or removed here. A creation writes its first
    /// session under the lease it inserted its row with; given back in between, another daemon takes it, the write
    /// is refused as fenced, and the creation fails (seen as an OAuth completion answering "Internal error").
    func mayGiveBack(_ name: String) -> Bool { !isBusy(name) && !isChanging(name) }

    /// A write under the context's lease: refused here once the lease ran out on this daemon's clock, and by the
    /// store once another daemon holds it (its fence moved on). Either way the renewal ends as `lease_lost`.
    func fenced(_ name: String, _ fencing: Fencing, _ write: (Int64) async throws -> Void) async throws {
        guard let fence = fence(name) else { throw RenewalError.lostLease(name) }
        do {
            try await write(fence)
        } catch let error as StoreError where error.code == .fenced {
            leases[name] = nil
            throw RenewalError.lostLease(name)
        }
    }
}
