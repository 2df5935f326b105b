import BunqAPI
import Foundation
import Logging
import ServiceLifecycle
import Synchronization

/// The session keeper: restores every identity from the state store, reconciles them with the configuration,
/// and keeps their sessions alive with one scheduler. Its API (lease, schedule, renew) is what the socket server
/// will expose.
public final class Keeper: Service, Sendable {
    public let configuration: KeeperConfiguration
    public let scheduler: SessionScheduler<ContinuousClock>
    let store: StateStore
    /// Held for the life of the daemon: one daemon per state directory.
    let stateLock: StateLock
    let client: BunqClient
    let cache: ContextCache
    let oauthStates = OAuthStates()
    let logger: Logger
    /// Sessions as the socket server reads them, without a round trip through the scheduler.
    public let leases = LeaseTable()
    /// Rotations and failures, for `session.subscribe`.
    public let events = EventBroadcaster()
    /// When the keeper started, for `daemon.status`.
    public let startedAt = Date()
    let signingKeys = SigningKeys()
    /// Fires once every stored context is restored and scheduled (expired ones renewing).
    public let restored = OneShotSignal()
    /// The session-server budget as `watchBudget` last saw it.
    let budgetState = Mutex(BudgetStatus(neededPerDay: 0, availablePerDay: 0, late: []))
    /// The API-key identities as a reload last set them (the renewal policy lives in the scheduler).
    let apiKeys: Mutex<[KeeperConfiguration.APIKeyIdentity]>

    /// Opens the store and the bunq client. `psd2` is the provider's checked material, when one is configured.
    public init(configuration: KeeperConfiguration, psd2: PSD2Material?, logger: Logger) throws {
        self.configuration = configuration
        self.logger = logger
        // The lock first: a second daemon must not touch the key, the database or the socket.
        stateLock = try StateLock(directory: configuration.stateDirectory)
        let key = try MasterKey.load(credentialsDirectory: configuration.credentialsDirectory,
                                     stateDirectory: configuration.stateDirectory)
        store = try StateStore(directory: configuration.stateDirectory, masterKey: key)
        // The scheduler grants the session-server budget itself, by urgency: the client's limiter leaves it alone,
        // so no session-server call is ever charged twice.
        let limiter = BunqRateLimiter(mode: configuration.rateLimits, scale: configuration.rateLimitScale,
                                      exempt: [BunqRateLimiter.sessionServer])
        client = try BunqClient(endpoints: configuration.endpoints, rateLimiter: limiter,
                                psd2FirstSessionTimeout: configuration.psd2FirstSessionTimeout,
                                permittedIPs: configuration.permittedIPs, sourceAddress: configuration.sourceAddress)
        cache = ContextCache()
        apiKeys = Mutex(configuration.apiKeys)
        let renewer = BunqRenewer(client: client, store: store, cache: cache, psd2: psd2,
                                  deviceDescription: configuration.deviceDescription, logger: logger)
        scheduler = SessionScheduler(policy: configuration.policy, budget: configuration.sessionServerBudget,
                                     renewer: renewer, maxConcurrent: configuration.maxConcurrentRenewals)
    }

    /// Restores stored contexts and adds the configured ones; returns the names now scheduled. Reads only the
    /// light records of OAuth users (the bulk at scale); configured identities are checked against their full
    /// registration.
    @discardableResult
    public func restore() async throws -> [String] {
        let records = Dictionary(uniqueKeysWithValues: try store.records().map { ($0.name, $0) })
        var wanted: [ContextRecord] = []
        var added: [StoredContext] = []
        if configuration.provider != nil {
            if let record = records["provider"] {
                wanted.append(record)
            } else {
                added.append(StoredContext(name: "provider", kind: .provider, registration: IdentityRegistration(kind: .psd2Provider)))
            }
        }
        for identity in configuration.apiKeys {
            if let record = records[identity.name], record.kind == .apiKey,
               try store.context(identity.name)?.registration.secret == identity.key {
                wanted.append(record)
            } else {
                if records[identity.name] != nil {
                    logger.notice("API key changed: registering the identity anew",
                                  metadata: ["bunq.context": "\(identity.name)"])
                    try store.removeContext(identity.name)
                }
                added.append(StoredContext(name: identity.name, kind: .apiKey,
                                           registration: IdentityRegistration(kind: .apiKey, secret: identity.key)))
            }
        }
        // OAuth-connected users are not in the configuration: they live in the store. A provisional entry left by
        // a crash during a connection is resumed under its provisional name.
        wanted += records.values.filter { $0.kind == .oauthUser }.sorted { $0.name < $1.name }
        for context in added {
            try store.saveRegistration(context.name, kind: context.kind, context.registration)
            wanted.append(context.record)
        }
        await cache.setMany(wanted)
        let schedules = await scheduler.addMany(wanted.map { ($0.name, $0.session, $0.generation) })
        for record in wanted {
            if let schedule = schedules[record.name] { leases.set(leaseEntry(record, schedule)) }
            // One line per identity for small deployments; at scale, only the summary below.
            logger.log(level: wanted.count <= 100 ? .info : .debug,
                       record.session == nil ? "identity added" : "identity restored", metadata: [
                "bunq.context": "\(record.name)",
                "bunq.next_step": "\(nextStep(record.name, added))",
                "bunq.expires_at": "\(record.session.map { ISO8601DateFormatter().string(from: $0.expiresAt) } ?? "-")",
            ])
        }
        logger.info("identities restored", metadata: ["bunq.count": "\(wanted.count)",
                                                      "bunq.with_session": "\(wanted.filter { $0.session != nil }.count)"])
        return wanted.map(\.name)
    }

    /// The next bootstrap step, for the start-up log (read from the store only when that line is logged).
    private func nextStep(_ name: String, _ added: [StoredContext]) -> String {
        if let fresh = added.first(where: { $0.name == name }) { return fresh.registration.nextStep.rawValue }
        return (try? store.context(name))?.registration.nextStep.rawValue ?? "?"
    }

    /// Runs the renewal loop and logs its events until shutdown.
    public func run() async throws {
        try await restore()
        restored.fire()
        await withDiscardingTaskGroup { group in
            group.addTask { [scheduler] in await cancelWhenGracefulShutdown { await scheduler.run() } }
            group.addTask { [self] in await logEvents() }
            group.addTask { [self] in await cancelWhenGracefulShutdown { await self.watchBudget() } }
        }
        await client.shutdown()
        logger.info("stopped")
    }

    private func logEvents() async {
        for await event in scheduler.events {
            switch event {
            case .rotated(let context, let generation, let expiresAt):
                events.publish(event, await refreshLease(context))
                logger.info("session renewed", metadata: [
                    "bunq.context": "\(context)", "bunq.generation": "\(generation)",
                    "bunq.expires_at": "\(ISO8601DateFormatter().string(from: expiresAt))",
                ])
            case .failed(let context, let error, let failures, let retryAt, let entered):
                events.publish(event, await refreshLease(context))
                var metadata: Logger.Metadata = ["bunq.context": "\(context)", "bunq.error": "\(error.message)",
                                                 "bunq.failures": "\(failures)"]
                if let retryAt { metadata["bunq.retry_at"] = "\(ISO8601DateFormatter().string(from: retryAt))" }
                if error.kind == .needsAttention {
                    if entered { logger.error("needs attention: bunq rejected the credentials", metadata: metadata) }
                } else {
                    logger.warning("renewal failed", metadata: metadata)
                }
            }
        }
    }

    /// Copies the scheduler's view of `name` into the lease table (or removes it); returns the new entry.
    @discardableResult
    func refreshLease(_ name: String) async -> LeaseEntry? {
        guard let record = await cache.get(name), let schedule = await scheduler.schedule(name) else {
            leases.remove(name)
            return nil
        }
        let entry = leaseEntry(record, schedule)
        leases.set(entry)
        return entry
    }

    /// The hot path's view of a context. A token may be handed out only while the scheduler's session is valid
    /// beyond the margin; from then on the monotonic clock decides.
    func leaseEntry(_ record: ContextRecord, _ schedule: ContextSchedule) -> LeaseEntry {
        var usableUntil: ContinuousClock.Instant?
        if [.live, .renewing, .retrying].contains(schedule.state), record.session != nil, let expiresAt = schedule.expiresAt {
            usableUntil = ContinuousClock.now + .seconds(expiresAt.addingTimeInterval(-schedule.margin).timeIntervalSinceNow)
        }
        return LeaseEntry(context: record.name, kind: record.kind, session: usableUntil == nil ? nil : record.session,
                          renewAt: schedule.renewAt, generation: schedule.generation,
                          serverPublicKeyPEM: record.serverPublicKeyPEM, usableUntil: usableUntil)
    }

    // MARK: The core's API

    public func lease(_ context: String) async -> LeaseResult? { await scheduler.lease(context) }

    /// Applies a reloaded configuration's API-key identities and renewal policy: new identities are registered,
    /// removed ones ended at bunq and forgotten, changed keys registered anew; `needs_attention` contexts are
    /// retried (a reload is how an operator says "I fixed it"). Other settings need a restart.
    public func applyReload(_ new: KeeperConfiguration) async throws {
        let old = apiKeys.withLock { keys in
            defer { keys = new.apiKeys }
            return keys
        }
        await scheduler.setPolicy(new.policy)
        for identity in old where !new.apiKeys.contains(where: { $0.name == identity.name && $0.key == identity.key }) {
            if await cache.get(identity.name) != nil { try await removeContext(identity.name, endSession: true) }
        }
        for identity in new.apiKeys where !old.contains(where: { $0.name == identity.name && $0.key == identity.key }) {
            let context = StoredContext(name: identity.name, kind: .apiKey,
                                        registration: IdentityRegistration(kind: .apiKey, secret: identity.key))
            try store.saveRegistration(context.name, kind: context.kind, context.registration)
            await cache.set(context.record)
            await scheduler.add(context.name, session: nil)
            await refreshLease(context.name)
            logger.notice("identity added by reload", metadata: ["bunq.context": "\(identity.name)"])
        }
        for name in await scheduler.contextNames where await scheduler.schedule(name)?.state == .needsAttention {
            await scheduler.requestRenewal(name)
        }
    }

    /// The configured identities (provider, API keys) whose first attempt at a session has not finished yet: no
    /// grantable session and no failure yet. READY waits for these, so a service
    /// started after bunq-sessiond finds its identities live; OAuth users (possibly very many) are not waited for.
    public func startupPending(at now: ContinuousClock.Instant = .now) async -> [String] {
        var names = configuration.provider == nil ? [] : ["provider"]
        names += apiKeys.withLock { $0.map(\.name) }
        var pending: [String] = []
        for name in names {
            if leases.entry(name)?.grantable(at: now) != nil { continue }
            // A failed first attempt settles it too: the STATUS line then says it is failing.
            // A first session that came and went (its renewal waiting for the budget) settles it as well.
            guard let schedule = await scheduler.schedule(name), schedule.consecutiveFailures == 0, schedule.generation == 0,
                  schedule.state != .needsAttention, schedule.state != .removed else { continue }
            pending.append(name)
        }
        return pending
    }

    /// bunq refused generation `generation`'s token of `context` (an application's call got 401/403): that token
    /// is withdrawn at once and one renewal runs, however many callers report the same generation. Returns the
    /// new session's generation and expiry once it is live.
    public func reportInvalid(_ context: String, generation: Int) async throws -> (generation: Int, expiresAt: Date) {
        switch await scheduler.sessionInvalid(context, generation: generation) {
        case nil:
            throw KeeperError(.unknownContext, "no context named \(context)")
        case .unknownGeneration?:
            throw KeeperError(.invalidGeneration, "generation \(generation) of \(context) was never handed out")
        case .needsAttention?:
            throw KeeperError(.needsAttention, await scheduler.schedule(context)?.reason ?? "needs attention")
        case .renewing?:
            logger.notice("session reported invalid", metadata: ["bunq.context": "\(context)",
                                                                 "bunq.generation": "\(generation)"])
            await refreshLease(context)
        case .alreadyReplaced?:
            break
        }
        switch await scheduler.renewal(of: context, after: generation) {
        case .success?:
            guard let schedule = await scheduler.schedule(context), let expiresAt = schedule.expiresAt else {
                throw KeeperError(.upstream, "the renewal of \(context) produced no session")
            }
            return (schedule.generation, expiresAt)
        case .failure(let error)?:
            throw error.kind == .needsAttention ? KeeperError(.needsAttention, error.code)
                : KeeperError(.upstream, "renewal failed: \(error.message)")
        case nil:
            throw KeeperError(.unknownContext, "no context named \(context)")
        }
    }

    /// The budget's state as last checked (utilisation, and who will run late above 100%).
    public var budget: BudgetStatus { budgetState.withLock { $0 } }

    /// Checks the session-server budget every `interval`: a warning when utilisation rises above 80% (once per
    /// crossing), another above 100% naming how many identities will run late.
    func watchBudget(interval: Duration = .seconds(10)) async {
        var level = 0  // 0: fine, 1: above 80%, 2: above 100%
        var lastLate = -1
        var round = 0
        while !Task.isCancelled {
            // The forecast (above 100%) walks every renewal due within a day: once a minute is enough.
            let status = await scheduler.budgetStatus(forecast: level < 2 || round % 6 == 0)
            round += 1
            budgetState.withLock { $0 = status }
            guard status.availablePerDay.isFinite else {  // `rate_limits: unlimited`: nothing to warn about
                try? await Task.sleep(for: interval)
                continue
            }
            let now = status.utilisation > 1 ? 2 : status.utilisation > 0.8 ? 1 : 0
            let metadata: Logger.Metadata = [
                "bunq.utilisation": "\(Int((status.utilisation * 100).rounded()))%",
                "bunq.needed_per_day": "\(Int(status.neededPerDay.rounded()))",
                "bunq.available_per_day": "\(Int(status.availablePerDay.rounded()))",
            ]
            if now == 2, now > level || status.late.count != lastLate {
                var metadata = metadata
                metadata["bunq.late"] = "\(status.late.count)"
                logger.warning("session-server budget exceeded", metadata: metadata)
                lastLate = status.late.count
            } else if now == 1, level == 0 {
                logger.warning("session-server budget above 80%", metadata: metadata)
            } else if now == 0, level > 0 {
                logger.notice("session-server budget back below 80%", metadata: metadata)
            }
            if now < 2 { lastLate = -1 }
            level = now
            try? await Task.sleep(for: interval)
        }
    }

    /// One line for `systemctl status`: "3 live, 0 failing; next renewal provider in 41 min".
    public func statusLine() async -> String {
        var live = 0, failing = 0, attention = 0
        for name in await scheduler.contextNames {
            switch await scheduler.schedule(name)?.state {
            case .live?, .renewing?: live += 1
            case .retrying?, .expired?, .bootstrapping?: failing += 1
            case .needsAttention?: attention += 1
            default: break
            }
        }
        var line = "\(live) live, \(failing) failing"
        if attention > 0 { line += ", \(attention) need attention" }
        let budget = self.budget
        if budget.availablePerDay.isFinite {
            line += "; session-server budget \(Int((budget.utilisation * 100).rounded()))%"
            if !budget.late.isEmpty { line += ", \(budget.late.count) will run late" }
        }
        if let (name, at) = await scheduler.nextDue() {
            let seconds = max(0, Int(at.timeIntervalSinceNow))
            let when = seconds >= 3_600 ? "\(seconds / 3_600) h \(seconds % 3_600 / 60) min"
                : seconds >= 60 ? "\(seconds / 60) min" : "\(seconds) s"
            line += "; next renewal \(name) in \(when)"
        }
        return line
    }
    public func schedule(_ context: String) async -> ContextSchedule? { await scheduler.schedule(context) }
    public func contextNames() async -> [String] { await scheduler.contextNames }
}
