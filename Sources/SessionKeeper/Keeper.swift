import BunqAPI
import BunqCrypto
import Foundation
import Logging
import ServiceLifecycle
import Synchronization
import Timekeeping

/// The session keeper: restores every identity from the state store, reconciles them with the configuration,
/// and keeps their sessions alive through one context registry. Its API (token grants, schedules, renewals on
/// demand) is what the socket server and the proxy serve.
public final class Keeper: Service, Sendable {
    public let configuration: KeeperConfiguration
    /// The one owner of every context: record, schedule, lease, signing key, published snapshot.
    public let registry: ContextRegistry
    let store: any StateBackend
    /// Held for the life of the daemon: one daemon per state directory.
    let stateLock: StateLock
    let client: BunqClient
    let oauthStates = OAuthStates()
    /// Makes new sessions for the registry's loop (bootstrap steps, session-server), writing through it.
    let renewer: BunqRenewer
    let logger: Logger
    /// Sessions as the socket server reads them (the registry's published snapshots), without a round trip.
    public let sessions: SessionTable
    /// Rotations and failures, for `session.subscribe`.
    public let events = EventBroadcaster()
    /// When the keeper started, for `daemon.status`.
    public let startedAt = Date()
    /// Installation keys as the socket and the proxy read them (published by the registry).
    let signingKeys = SigningKeys()
    let serverKeys = ServerKeys()
    /// Fires once every stored context is restored and scheduled (expired ones renewing).
    public let restored = OneShotSignal()
    /// The session-server budget as `watchBudget` last saw it.
    let budgetState = Mutex(BudgetStatus(neededPerDay: 0, availablePerDay: 0, late: []))
    /// The API-key identities as a reload last set them (the renewal policy lives in the registry).
    let apiKeys: Mutex<[APIKeyIdentity]>
    /// `renewal.min_manual_interval`, as the last reload set it.
    let minManualRenewal: Mutex<TimeInterval>
    /// Why the state could not be restored at start (the store refused, a wrong key), for the exit status.
    public let startFailure = Mutex<String?>(nil)
    /// Identities the start-up forgot (no longer configured): their sessions are ended at bunq once running.
    let droppedAtStart = Mutex<[StoredContext]>([])

    /// The provider's certificate, re-checked daily for expiry.
    let certificate: Certificate?
    /// With several daemons on one store: leases, the shared budget and the other daemons' changes.
    let cluster: Cluster?
    /// The monotonic clock everything here reads and waits on (renewals, leases, windows, the proxy's waits),
    /// and the wall clock that bunq's expiry times are read against.
    public let clock: AnyClock
    let wallClock: @Sendable () -> Date

    /// Opens a backend other than the embedded SQLite store, given the master key and where it came from (the
    /// daemon supplies PostgreSQL's, which this module does not link).
    public typealias StoreOpener = @Sendable (_ key: SymmetricKey, _ keySource: String) throws -> any StateBackend

    /// The state store (a PostgreSQL store is also a `Service` the daemon runs, first and stopped last).
    public var stateBackend: any StateBackend { store }

    /// Opens the store and the bunq client. `psd2` is the provider's checked material, when one is configured.
    public init(configuration: KeeperConfiguration, psd2: PSD2Material?, logger: Logger,
                openStore: StoreOpener? = nil,
                clock: AnyClock = .continuous, wallClock: @escaping @Sendable () -> Date = Date.init) throws {
        self.configuration = configuration
        self.clock = clock
        self.wallClock = wallClock
        sessions = SessionTable(clock: clock)
        certificate = psd2?.certificate
        self.logger = logger
        // The lock first: a second daemon must not touch the key, the database or the socket.
        stateLock = try StateLock(directory: configuration.state.directory)
        let key = try MasterKey.load(credentialsDirectory: configuration.state.credentialsDirectory,
                                     stateDirectory: configuration.state.directory, file: configuration.state.masterKeyFile)
        let keySource = MasterKey.source(credentialsDirectory: configuration.state.credentialsDirectory,
                                         stateDirectory: configuration.state.directory, file: configuration.state.masterKeyFile)
        switch (configuration.state.backend, openStore) {
        case (.sqlite, _):
            store = try StateStore(directory: configuration.state.directory, masterKey: key, keySource: keySource,
                                   timeout: configuration.state.timeout, logger: logger)
        case (.postgresql, let openStore?):
            store = try openStore(key, keySource)
        case (.postgresql, nil):
            throw StoreError(.database, "state.backend postgresql: this program has no PostgreSQL support linked")
        }
        // The registry's loop grants the session-server budget itself, by urgency: the client's limiter leaves it alone,
        // so no session-server call is ever charged twice.
        let limiter = BunqRateLimiter(mode: configuration.bunq.rateLimits, scale: configuration.bunq.rateLimitScale,
                                      exempt: [BunqRateLimiter.sessionServer], clock: clock)
        client = try BunqClient(endpoints: configuration.bunq.endpoints, rateLimiter: limiter,
                                psd2FirstSessionTimeout: configuration.bunq.psd2FirstSessionTimeout,
                                permittedIPs: configuration.bunq.permittedIPs, sourceAddress: configuration.bunq.sourceAddress,
                                wallClock: wallClock)
        apiKeys = Mutex(configuration.apiKeys)
        minManualRenewal = Mutex(configuration.renewal.minManualInterval)
        if let settings = configuration.cluster {
            guard let shared = store as? any ClusterStore else {
                throw StoreError(.database, "the store \(store.location) cannot be shared by a cluster")
            }
            var clusterLogger = logger
            clusterLogger[metadataKey: "bunq.instance"] = "\(settings.instance)"
            cluster = Cluster(settings: settings, store: shared, clock: clock,
                              spacing: configuration.sessionServerBudget.spacing, logger: clusterLogger)
        } else {
            cluster = nil
        }
        // In order, nothing wired afterwards: the registry; the renewer, which writes through it and is handed to
        // its loop when it runs.
        registry = ContextRegistry(store: store, sessions: sessions, signingKeys: signingKeys,
                                   policy: configuration.renewal.policy, budget: configuration.sessionServerBudget,
                                   maxConcurrent: configuration.renewal.maxConcurrent, fencing: cluster.map {
            ContextRegistry.Fencing(store: $0.store, instance: $0.settings.instance,
                                    leaseDuration: $0.settings.leaseDuration, localDuration: $0.settings.localDuration)
        }, clock: clock, wallClock: wallClock)
        var renewer = BunqRenewer(client: client, store: store, registry: registry, psd2: psd2,
                                  deviceDescription: configuration.deviceDescription, logger: logger,
                                  skewWarnings: Throttle(every: .seconds(3_600), clock: clock))
        renewer.cluster = cluster
        self.renewer = renewer
    }

    /// Restores stored contexts and adds the configured ones; returns the names now scheduled. Reads only the
    /// light records of OAuth users (the bulk at scale); configured identities are checked against their full
    /// registration. API-key identities no longer configured (or whose key changed) are forgotten here, as a
    /// reload would; their sessions are ended at bunq afterwards, off the start-up path (`dropped`).
    @discardableResult
    public func restore() async throws -> [String] {
        let records = Dictionary(uniqueKeysWithValues: try await store.records().map { ($0.name, $0) })
        var kept: [ContextRecord] = []
        var added: [StoredContext] = []
        var dropped: [String] = []
        var keysAtRestore: [(String, IdentityRegistration)] = []
        if configuration.provider != nil {
            if let record = records["provider"] {
                kept.append(record)
            } else {
                added.append(StoredContext(name: "provider", kind: .provider, registration: IdentityRegistration(kind: .psd2Provider)))
            }
        }
        for identity in configuration.apiKeys {
            if let record = records[identity.name], record.kind == .apiKey,
               let stored = try await store.context(identity.name), stored.registration.secret == identity.key {
                kept.append(record)
                keysAtRestore.append((identity.name, stored.registration))
            } else {
                if records[identity.name] != nil {
                    logger.notice("API key changed: registering the identity anew",
                                  metadata: ["bunq.context": "\(identity.name)"])
                    dropped.append(identity.name)
                }
                added.append(StoredContext(name: identity.name, kind: .apiKey,
                                           registration: IdentityRegistration(kind: .apiKey, secret: identity.key)))
            }
        }
        let configuredKeys = Set(configuration.apiKeys.map(\.name))
        for record in records.values where record.kind == .apiKey && !configuredKeys.contains(record.name) {
            logger.notice("identity no longer configured: ending and forgetting it", metadata: ["bunq.context": "\(record.name)"])
            dropped.append(record.name)
        }
        // OAuth-connected users are not in the configuration: they live in the store. A provisional entry left by
        // a crash during a connection is resumed under its provisional name.
        kept += records.values.filter { $0.kind == .oauthUser }.sorted { $0.name < $1.name }
        // Dropped contexts are owned for an instant, only to be removed through the registry: its loop does not
        // run yet, so none of them is renewed.
        await registry.restore(kept + dropped.compactMap { records[$0] })
        for (name, registration) in keysAtRestore { await registry.publishKey(name, registration) }
        var ended: [StoredContext] = []
        for name in dropped {
            if let stored = try await registry.remove(name) { ended.append(stored) }
        }
        droppedAtStart.withLock { $0 = ended }
        for context in added {
            try await registry.create(context.name, kind: context.kind, context.registration)
        }
        let wanted = kept + added.map(\.record)
        // One line per identity for small deployments; at scale, only the summary below.
        for record in wanted where wanted.count <= 100 {
            let step = await nextStep(record.name, added)
            logger.info(record.session == nil ? "identity added" : "identity restored", metadata: [
                "bunq.context": "\(record.name)",
                "bunq.next_step": "\(step)",
                "bunq.expires_at": "\(record.session.map { ISO8601DateFormatter().string(from: $0.expiresAt) } ?? "-")",
            ])
        }
        logger.info("identities restored", metadata: ["bunq.count": "\(wanted.count)",
                                                      "bunq.with_session": "\(wanted.filter { $0.session != nil }.count)"])
        return wanted.map(\.name)
    }

    /// The next bootstrap step, for the start-up log (read from the store only when that line is logged).
    private func nextStep(_ name: String, _ added: [StoredContext]) async -> String {
        if let fresh = added.first(where: { $0.name == name }) { return fresh.registration.nextStep.rawValue }
        guard let stored = try? await store.context(name) else { return "?" }
        await registry.publishKey(name, stored.registration)
        return stored.registration.nextStep.rawValue
    }

    /// Publishes the installation key of every context restored without one (after READY, in the background), so
    /// `request.sign` and the proxy answer from memory, also while the store is unreachable. A context the store
    /// cannot give now is read again at its first signature or its next renewal.
    ///
    /// Paced to at most about a quarter of a core: after each batch it rests three times as long as the batch took,
    /// so a restart with many identities does not compete with the token path (100,000 keys take minutes, not a
    /// core's worth of seconds).
    func warmSigningKeys(batch: Int = 64) async {
        var failures = 0
        var done = 0
        var batchStarted = clock.now
        for name in await registry.names.sorted() where !signingKeys.has(name) {
            guard !Task.isCancelled else { return }
            do {
                _ = try await signingKey(name)
                failures = 0
            } catch let error as StoreError where error.code == .timeout || error.code == .database {
                // Unreachable: the rest waits for first use rather than a deadline each.
                failures += 1
                if failures >= 3 { return }
            } catch {
                continue
            }
            done += 1
            if done % batch == 0 {
                try? await clock.sleep(until: clock.now + (clock.now - batchStarted) * 3)
                batchStarted = clock.now
            }
        }
    }

    /// Runs the renewal loop and logs its events until shutdown. A restore that fails (the state cannot be read)
    /// fails `restored` and is thrown: the daemon stops instead of serving nothing.
    public func run() async throws {
        do {
            // A store that is slow to answer at start (PostgreSQL failing over, a frozen server) holds the start,
            // not a shutdown: SIGTERM meanwhile ends the wait.
            try await cancelWhenGracefulShutdown { try await self.store.prepare() }
            // Asked to stop before the state was even read: nothing to restore, nothing to run.
            if Task.isCancelled || Task.isShuttingDownGracefully {
                restored.fail()
                await client.shutdown()
                return
            }
            _ = try await cancelWhenGracefulShutdown { try await self.restore() }
        } catch where Task.isCancelled || Task.isShuttingDownGracefully {
            // Stopped while the store was being read: not a failure to report.
            logger.info("stopped before the state was restored")
            restored.fail()
            await client.shutdown()
            return
        } catch {
            // Said here, with its cause: the service group may report another service's end first (READY waited
            // for this restore), which would not say why.
            logger.error("cannot restore the state", metadata: ["bunq.store": "\(store.location)", "error": "\(error)"])
            startFailure.withLock { $0 = "\(error)" }
            restored.fail()
            await client.shutdown()
            throw error
        }
        restored.fire()
        await withDiscardingTaskGroup { group in
            group.addTask { [self] in await endDroppedSessions() }
            group.addTask { [self] in await cancelWhenGracefulShutdown { await self.warmSigningKeys() } }
            group.addTask { [self] in await cancelWhenGracefulShutdown { await self.watchCertificate() } }
            group.addTask { [registry, renewer] in await cancelWhenGracefulShutdown { await registry.run(renewing: renewer) } }
            group.addTask { [self] in await logEvents() }
            group.addTask { [self] in await cancelWhenGracefulShutdown { await self.watchBudget() } }
            if let cluster {
                group.addTask { [self] in
                    await cancelWhenGracefulShutdown { await cluster.run(registry: self.registry, events: self.events) }
                }
            }
        }
        await client.shutdown()
        logger.info("stopped")
    }

    /// Checks the provider's certificate now and then daily: a warning within 30 days of its expiry, an error
    /// once expired (bunq refuses new PSD2 sessions then; the running ones last until they expire).
    func watchCertificate(every interval: Duration = .seconds(86_400)) async {
        guard let certificate, let path = configuration.provider?.certificatePath else { return }
        let notAfter = ISO8601DateFormatter().string(from: certificate.notAfter)
        await CertificateWatch(notAfter: certificate.notAfter).run(every: interval, on: clock, wall: wallClock) { finding in
            var metadata: Logger.Metadata = ["bunq.context": "provider", "bunq.certificate": "\(path)",
                                             "bunq.not_after": "\(notAfter)"]
            // Stable messages, so journald attaches the MESSAGE_IDs operators alert on.
            switch finding {
            case .expired(let daysLeft):
                metadata["bunq.days_left"] = "\(daysLeft)"
                logger.error("certificate expired", metadata: metadata)
            case .expiring(let daysLeft):
                metadata["bunq.days_left"] = "\(daysLeft)"
                logger.warning("certificate expiring", metadata: metadata)
            }
        }
    }

    /// Ends at bunq the sessions of the identities restore forgot (best effort: they are gone from here either way).
    private func endDroppedSessions() async {
        for stored in droppedAtStart.withLock({ dropped in defer { dropped = [] }; return dropped }) {
            await endSession(of: stored)
        }
    }

    private func logEvents() async {
        for await change in registry.events {
            let event = change.event
            switch event {
            case .rotated(let context, let generation, let expiresAt):
                events.publish(event, change.entry)
                KeeperMetrics.renewal(kind: change.kind, result: "ok")
                logger.info("session renewed", metadata: [
                    "bunq.context": "\(context)", "bunq.generation": "\(generation)",
                    "bunq.expires_at": "\(ISO8601DateFormatter().string(from: expiresAt))",
                ])
            case .failed(let context, let error, let failures, let retryAt, let entered):
                events.publish(event, change.entry)
                // A renewal that outlived its context's removal: nothing failed that anyone needs to hear of.
                guard error.code != .removed else { continue }
                KeeperMetrics.renewal(kind: change.kind, result: KeeperMetrics.result(error))
                var metadata: Logger.Metadata = ["bunq.context": "\(context)", "bunq.error": "\(error.message)",
                                                 "bunq.failures": "\(failures)"]
                if let retryAt { metadata["bunq.retry_at"] = "\(ISO8601DateFormatter().string(from: retryAt))" }
                if error.kind == .needsAttention {
                    if entered { logger.error("needs attention: bunq rejected the credentials", metadata: metadata) }
                } else {
                    logger.warning("renewal failed", metadata: metadata)
                }
            case .removed:
                break
            }
        }
    }

    // MARK: The core's API

    public func tokenGrant(_ context: String) async -> TokenGrant? { await registry.tokenGrant(context) }

    /// Applies a reloaded configuration's API-key identities and renewal policy: new identities are registered,
    /// removed ones ended at bunq and forgotten, changed keys registered anew; `needs_attention` contexts are
    /// retried (a reload is how an operator says "I fixed it"). Other settings need a restart.
    ///
    /// The configuration is already validated in full. The changes are worked out against what the registry holds
    /// now (not against the previous file), so a reload that failed half-way is completed by the next one.
    public func applyReload(_ new: KeeperConfiguration) async throws {
        await registry.setPolicy(new.renewal.policy)
        minManualRenewal.withLock { $0 = new.renewal.minManualInterval }
        let wanted = Dictionary(uniqueKeysWithValues: new.apiKeys.map { ($0.name, $0.key) })
        let previous = apiKeys.withLock { $0 }
        var failure: (any Error)?
        for name in await registry.names.sorted() {
            guard let record = await registry.record(name), record.kind == .apiKey else { continue }
            let key = previous.first { $0.name == name }?.key
            if let wantedKey = wanted[name], wantedKey == key { continue }
            do {
                try await removeContext(name, endSession: true)
            } catch {
                failure = failure ?? error
            }
        }
        for identity in new.apiKeys where await registry.record(identity.name) == nil {
            do {
                try await registry.create(identity.name, kind: .apiKey, IdentityRegistration(kind: .apiKey, secret: identity.key))
                logger.notice("identity added by reload", metadata: ["bunq.context": "\(identity.name)"])
            } catch {
                failure = failure ?? error
            }
        }
        // What is applied now, so the next reload's differences are against it.
        let applied = await registry.names
        apiKeys.withLock { keys in keys = new.apiKeys.filter { applied.contains($0.name) } }
        if let failure { throw failure }
        for name in await registry.contextNames where await registry.schedule(name)?.state == .needsAttention {
            await registry.requestRenewal(name)
        }
    }

    /// What `session.renew` does: the current session when the last renewal is more recent than
    /// `renewal.min_manual_interval` (unless `force`, for admins); otherwise a renewal, joining one already under
    /// way, queued for the session-server budget like every other. Nil for an unknown context.
    public func manualRenewal(_ context: String, force: Bool) async -> Result<(generation: Int, expiresAt: Date, renewed: Bool), RenewalError>? {
        guard let schedule = await registry.schedule(context) else { return nil }
        let interval = minManualRenewal.withLock { $0 }
        if !force, let last = schedule.lastRenewedAt, wallClock().timeIntervalSince(last) < interval,
           [.live, .renewing, .retrying].contains(schedule.state), let expiresAt = schedule.expiresAt {
            return .success((schedule.generation, expiresAt, false))
        }
        let outcome: Result<SessionInfo, RenewalError>?
        if let cluster, await !registry.holdsLease(context) {
            // Another daemon renews it: asked to, this one waits for the session it commits.
            outcome = await awaitingHolder(context) { [registry] in await registry.renewNow(context) } ask: {
                await cluster.askHolder(context)
            }
        } else {
            outcome = await registry.renewNow(context)
        }
        switch outcome {
        case .success(let session)?:
            return .success((await registry.schedule(context)?.generation ?? 0, session.expiresAt, true))
        case .failure(let error)?:
            return .failure(error)
        case nil:
            return nil
        }
    }

    /// The configured identities (provider, API keys) whose first attempt at a session has not finished yet: no
    /// grantable session and no failure yet. READY waits for these, so a service
    /// started after bunq-sessiond finds its identities live; OAuth users (possibly very many) are not waited for.
    public func startupPending() async -> [String] {
        let now = sessions.now
        var names = configuration.provider == nil ? [] : ["provider"]
        names += apiKeys.withLock { $0.map(\.name) }
        var pending: [String] = []
        for name in names {
            if sessions.entry(name)?.grantable(at: now) != nil { continue }
            // A failed first attempt settles it too: the STATUS line then says it is failing.
            // A first session that came and went (its renewal waiting for the budget) settles it as well.
            guard let schedule = await registry.schedule(name), schedule.consecutiveFailures == 0, schedule.generation == 0,
                  schedule.state != .needsAttention, schedule.state != .removed else { continue }
            pending.append(name)
        }
        return pending
    }

    /// bunq refused generation `generation`'s token of `context` (an application's call got 401/403): that token
    /// is withdrawn at once and one renewal runs, however many callers report the same generation. Returns the
    /// new session's generation and expiry once it is live.
    public func reportInvalid(_ context: String, generation: Int) async throws -> (generation: Int, expiresAt: Date) {
        switch await registry.sessionInvalid(context, generation: generation) {
        case nil:
            throw KeeperError(.unknownContext, "no context named \(context)")
        case .unknownGeneration?:
            throw KeeperError(.invalidGeneration, "generation \(generation) of \(context) was never handed out")
        case .needsAttention?:
            throw KeeperError(.needsAttention, await registry.schedule(context)?.reason ?? "needs attention")
        case .renewing?:
            logger.notice("session reported invalid", metadata: ["bunq.context": "\(context)",
                                                                 "bunq.generation": "\(generation)"])
        case .alreadyReplaced?:
            break
        }
        let outcome: Result<SessionInfo, RenewalError>?
        if let cluster, await !registry.holdsLease(context) {
            outcome = await awaitingHolder(context) { [registry] in await registry.renewal(of: context, after: generation) } ask: {
                await cluster.askHolder(context, invalid: generation)
            }
        } else {
            outcome = await registry.renewal(of: context, after: generation)
        }
        switch outcome {
        case .success?:
            guard let schedule = await registry.schedule(context), let expiresAt = schedule.expiresAt else {
                throw KeeperError(.upstream, "the renewal of \(context) produced no session")
            }
            return (schedule.generation, expiresAt)
        case .failure(let error)?:
            throw error.kind == .needsAttention ? KeeperError(.needsAttention, error.code.description)
                : KeeperError(.upstream, "renewal failed: \(error.message)")
        case nil:
            throw KeeperError(.unknownContext, "no context named \(context)")
        }
    }

    /// A renewal that the context's lease holder (another daemon) makes: `wait` for its outcome here, once the
    /// holder was asked; a holder that does not answer within two lease periods (none alive, or the store
    /// unreachable) ends the wait with a retryable failure.
    private func awaitingHolder(_ context: String, _ wait: @escaping @Sendable () async -> Result<SessionInfo, RenewalError>?,
                                ask: @Sendable () async -> Bool) async -> Result<SessionInfo, RenewalError>? {
        let patience = (configuration.cluster?.leaseSeconds ?? 30) * 2 + 30
        let clock = self.clock
        return await withTaskGroup(of: Result<SessionInfo, RenewalError>??.self) { group in
            group.addTask { await wait() }
            guard await ask() else {
                group.cancelAll()
                return .failure(RenewalError(.retryable, "the state store is unreachable: the holder of \(context) cannot be asked",
                                             code: .storeUnreachable))
            }
            group.addTask {
                try? await clock.sleep(until: clock.now + .seconds(patience))
                return .some(.failure(RenewalError(.retryable, "the daemon holding \(context) did not renew it", code: .holderSilent)))
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first ?? nil
        }
    }

    /// The state store's health: `daemon.status.state`, the STATUS line.
    public var storeHealth: StoreHealth { store.calls.health }

    /// `daemon.status.cluster`: nil alone on a store.
    public func clusterStatus() async -> ClusterStatus? {
        guard var status = cluster?.status else { return nil }
        status.leasesHeld = await registry.leaseCount
        return status
    }

    /// The budget's state as last checked (utilisation, and who will run late above 100%).
    public var budget: BudgetStatus { budgetState.withLock { $0 } }

    /// Checks the session-server budget every `interval`: a warning when utilisation rises above 80% (once per
    /// crossing), another above 100% naming how many identities will run late.
    func watchBudget(interval: Duration = .seconds(10)) async {
        var watch = BudgetWatch()
        await watch.run(every: interval, on: clock, status: { forecast in
            var status = await registry.budgetStatus(forecast: forecast)
            // A cluster's renewals are spread over its egress groups: each brings one IP's budget.
            if let cluster { status.availablePerDay *= Double(cluster.egressGroups) }
            budgetState.withLock { $0 = status }
            return status
        }, report: { message, status in
            var metadata: Logger.Metadata = [
                "bunq.utilisation": "\(Int((status.utilisation * 100).rounded()))%",
                "bunq.needed_per_day": "\(Int(status.neededPerDay.rounded()))",
                "bunq.available_per_day": "\(Int(status.availablePerDay.rounded()))",
            ]
            switch message {
            case .exceeded(let late):
                metadata["bunq.late"] = "\(late)"
                logger.warning("session-server budget exceeded", metadata: metadata)
            case .above80:
                logger.warning("session-server budget above 80%", metadata: metadata)
            case .backBelow80:
                logger.notice("session-server budget back below 80%", metadata: metadata)
            }
        })
    }

    /// One line for `systemctl status`: "3 live, 0 failing; next renewal provider in 41 min". From the published
    /// snapshots' counts: nothing per context.
    public func statusLine() async -> String {
        let counts = sessions.stateCounts
        let live = (counts[.live] ?? 0) + (counts[.renewing] ?? 0)
        let failing = (counts[.retrying] ?? 0) + (counts[.expired] ?? 0) + (counts[.bootstrapping] ?? 0)
        let attention = counts[.needsAttention] ?? 0
        var line = "\(live) live, \(failing) failing"
        if attention > 0 { line += ", \(attention) need attention" }
        let budget = self.budget
        if budget.availablePerDay.isFinite {
            line += "; session-server budget \(Int((budget.utilisation * 100).rounded()))%"
            if !budget.late.isEmpty { line += ", \(budget.late.count) will run late" }
        }
        let health = store.calls.health
        if !health.reachable {
            let since = health.failingSince.map { " for \(max(0, Int(wallClock().timeIntervalSince($0))))s" } ?? ""
            line += "; STATE STORE UNREACHABLE\(since), serving held sessions"
        } else if let status = await clusterStatus() {
            line += "; \(status.leasesHeld) leases, \(status.members.count) daemons"
        }
        if let (name, at) = await registry.nextDue() {
            let seconds = max(0, Int(at.timeIntervalSinceNow))
            let when = seconds >= 3_600 ? "\(seconds / 3_600) h \(seconds % 3_600 / 60) min"
                : seconds >= 60 ? "\(seconds / 60) min" : "\(seconds) s"
            line += "; next renewal \(name) in \(when)"
        }
        return line
    }
    public func schedule(_ context: String) async -> ContextSchedule? { await registry.schedule(context) }
    public func contextNames() async -> [String] { await registry.contextNames }
}
