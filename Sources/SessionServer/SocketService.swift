import BunqAPI
import Foundation
import Logging
import Metrics
import SessionKeeper
import UnixListener
import SessionProtocol
import Synchronization
import Timekeeping

/// The socket protocol's methods over the keeper, with access control. Answers are complete response lines.
public final class SocketService: Sendable {
    let keeper: Keeper
    public let access: AccessControl
    let logger: Logger
    /// (uid, context) pairs already granted a token: the first grant is logged at info, later ones at debug.
    private let granted = Mutex<Set<GrantKey>>([])

    struct GrantKey: Hashable {
        let uid: UInt32
        let context: String
    }
    /// Serialized `session.get` results per context and generation: the hot path reuses them.
    private let grantJSON = Mutex<[String: (session: SessionInfo, generation: Int, json: [UInt8])]>([:])
    private let ready = Atomic<Bool>(false)
    /// Live subscriptions, re-decided when the access rules change.
    let subscriptions = SubscriptionRegistry()
    let metrics = RPCMetrics()

    /// Whether `request.sign` is answered on the event loop that read it (no hop); else on SwiftNIO's blocking
    /// pool, a thread per core. Inline is best while the loops spread signing over every core.
    let signsInline: Bool

    /// `signsInline`: see above; the daemon passes whether its event loops cover the cores.
    public init(keeper: Keeper, access: AccessControl, logger: Logger, signsInline: Bool = true) {
        self.keeper = keeper
        self.access = access
        self.logger = logger
        self.signsInline = signsInline
    }

    public func markReady() { ready.store(true, ordering: .releasing) }

    /// New access rules (a reload): applied, then every live subscription is re-decided against them, so a
    /// revoked caller's subscription ends now, not at its next notification.
    public func updateAccess(_ rules: AccessRules) {
        access.update(rules)
        subscriptions.revalidate()
    }

    // MARK: session.get (the hot path: no suspension)

    /// What the hot path can say about a `session.get` without suspending.
    enum FastGrant {
        /// The `result` member's JSON, cached per context and generation.
        case granted([UInt8])
        /// Unknown, or not the caller's: answered as unknown (names cannot be probed).
        case unknown
        /// The slow path must decide (no grantable session, or the state is not restored yet).
        case slow
    }

    /// The answer when a token can be handed out right away; nil when the slow path must decide.
    func sessionGetFast(_ request: RPCRequest, id: RPCID, peer: PeerCredentials) -> [UInt8]? {
        guard let context = request.string("context") else {
            metrics.count(RPCMethod.sessionGet.rawValue, .invalidParams)
            return RPCCodec.error(id: id, .invalidParams, "Invalid params: context (a string) is required")
        }
        switch sessionGetFast(context: context, peer: peer) {
        case .granted(let result): return RPCCodec.result(id: id, result)
        case .unknown: return RPCCodec.error(id: id, .unknownContext, "Unknown context: \(context)")
        case .slow: return nil
        }
    }

    /// `session.get` of `context` on the hot path: a lookup in the published table and, for a grant, the result
    /// JSON serialized once per generation. Counted here unless `counted` is false (the slow path counts its own
    /// answers; `.slow` is always the slow path's to count).
    func sessionGetFast(context: String, peer: PeerCredentials, logged: Bool = false, counted: Bool = true) -> FastGrant {
        guard access.mayUse(peer, context), let entry = keeper.sessions.entry(context) else {
            // Before the state is restored nothing is known yet: a context the caller may use is starting.
            if !keeper.restored.hasFired, access.mayUse(peer, context) { return .slow }
            if counted { metrics.sessionGetUnknown.increment() }
            return .unknown
        }
        guard let session = entry.grantable(at: keeper.sessions.now) else { return .slow }
        if counted { metrics.sessionGetGranted.increment() }
        // `logged`: this connection was already granted this context (its first grant was logged).
        if !logged || logger.logLevel <= .debug { logGrant(context, peer) }
        return .granted(grantJSON.withLock { cache -> [UInt8] in
            if let cached = cache[context], cached.session == session, cached.generation == entry.generation { return cached.json }
            var fields = "{\"context\":\(JSONText.quote(context)),\"token\":\(JSONText.quote(session.token))"
            fields += ",\"user_id\":\(session.userId),\"expires_at\":\"\(JSONText.timestamp(session.expiresAt))\""
            fields += ",\"renew_at\":" + (entry.renewAt.map { "\"\(JSONText.timestamp($0))\"" } ?? "null")
            fields += ",\"generation\":\(entry.generation),\"server_public_key\":"
                + (entry.serverPublicKeyPEM.map(JSONText.quote) ?? "null") + "}"
            let json = Array(fields.utf8)
            cache[context] = (session, entry.generation, json)
            return json
        })
    }

    private func logGrant(_ context: String, _ peer: PeerCredentials) {
        let first = granted.withLock { $0.insert(GrantKey(uid: peer.uid, context: context)).inserted }
        let level: Logger.Level = first ? .info : .debug
        guard logger.logLevel <= level else { return }
        logger.log(level: level, first ? "token granted to a new caller" : "token granted", metadata: [
            "bunq.context": "\(context)", "bunq.peer_pid": "\(peer.pid)", "bunq.peer_uid": "\(peer.uid)",
            "bunq.peer_unit": "\(peer.unit ?? "-")",
        ])
    }

    // MARK: request.sign (RSA work on the event loop or SwiftNIO's blocking pool with the key the owner published;
    // a key not published yet takes the slow path, which reads it from the store within the store's deadline)

    /// The parsed request, when it is a well-formed `request.sign` the caller may make; else nil (slow path).
    func signInput(_ request: RPCRequest, peer: PeerCredentials) -> (context: String, body: [UInt8])? {
        guard let context = request.string("context"), access.mayUse(peer, context),
              keeper.sessions.entry(context) != nil, keeper.hasSigningKey(context) else { return nil }
        if let text = request.string("body") { return (context, Array(text.utf8)) }
        if let encoded = request.string("body_base64"), let data = Data(base64Encoded: encoded) { return (context, Array(data)) }
        return nil
    }

    /// The answer, when the context's key is already parsed; nil when signing needs the store (slow path).
    func signInline(_ context: String, _ body: [UInt8], id: RPCID) -> [UInt8]? {
        do {
            guard let signature = try keeper.signIfKeyLoaded(context, body: body) else { return nil }
            metrics.count(RPCMethod.requestSign.rawValue, nil)
            return RPCCodec.result(id: id, "{\"signature\":\(JSONText.quote(signature))}")
        } catch {
            metrics.count(RPCMethod.requestSign.rawValue, .unknownContext)
            return RPCCodec.error(id: id, .unknownContext, "Unknown context: \(context)")
        }
    }

    /// The answer, signing on the calling thread (a blocking pool's) with the published key (`signInput` checked
    /// there is one: it is never removed but with its context).
    func signBlocking(_ context: String, _ body: [UInt8], id: RPCID) -> [UInt8] {
        do {
            guard let signature = try keeper.signIfKeyLoaded(context, body: body) else {
                throw KeeperError(.unknownContext, "no context named \(context)")
            }
            let answer = RPCCodec.result(id: id, "{\"signature\":\(JSONText.quote(signature))}")
            metrics.count(RPCMethod.requestSign.rawValue, nil)
            return answer
        } catch {
            metrics.count(RPCMethod.requestSign.rawValue, .unknownContext)
            return RPCCodec.error(id: id, .unknownContext, "Unknown context: \(context)")
        }
    }

    // MARK: Everything else

    /// Answers any request (the slow path); `subscribe` registers a subscription for this connection.
    func handle(_ request: RPCRequest, id: RPCID, peer: PeerCredentials,
                subscribe: @Sendable ([String]) -> Void) async -> [UInt8] {
        let (answer, code) = await answer(request, id: id, peer: peer, subscribe: subscribe)
        metrics.count(request.method, code)
        return answer
    }

    private func answer(_ request: RPCRequest, id: RPCID, peer: PeerCredentials,
                        subscribe: @Sendable ([String]) -> Void) async -> ([UInt8], RPCErrorCode?) {
        guard let method = RPCMethod(rawValue: request.method) else {
            return (RPCCodec.error(id: id, .methodNotFound, "Method not found: \(request.method)"), .methodNotFound)
        }
        do {
            return (RPCCodec.result(id: id, try await call(method, request, peer: peer, subscribe: subscribe)), nil)
        } catch let error as ServiceError {
            return (RPCCodec.error(id: id, error.code, error.message, data: error.data), error.code)
        } catch let error as KeeperError {
            let code: RPCErrorCode = switch error.code {
            case .unknownContext: .unknownContext
            case .invalidOAuthState: .invalidOAuthState
            case .providerNotLive: .sessionUnavailable
            case .noProvider, .invalidRedirectURI, .invalidGeneration: .invalidParams
            case .needsAttention: .needsAttention
            case .upstream: .upstreamFailure
            case .store: .internalError
            }
            if error.code == .needsAttention {
                return (RPCCodec.error(id: id, code, "Needs attention", data: ["state": "needs_attention", "reason": error.message]), code)
            }
            return (RPCCodec.error(id: id, code, error.message), code)
        } catch let error as StoreError where error.code == .timeout || error.code == .database {
            // What the request needed from the store could not be had now (the store's own log line says why,
            // once): unavailable, try again; the connection and everything served from memory go on.
            return (RPCCodec.error(id: id, .sessionUnavailable, "The state store is unavailable; try again",
                                   data: ["state": "store_unavailable", "reason": error.code.rawValue]), .sessionUnavailable)
        } catch {
            logger.error("request failed", metadata: ["bunq.method": "\(request.method)", "error": "\(error)"])
            return (RPCCodec.error(id: id, .internalError, "Internal error"), .internalError)
        }
    }

    struct ServiceError: Error {
        let code: RPCErrorCode
        let message: String
        var data: [String: String]?
    }

    private func requireContext(_ request: RPCRequest, _ peer: PeerCredentials) async throws -> String {
        guard let context = request.string("context") else {
            throw ServiceError(code: .invalidParams, message: "Invalid params: context (a string) is required")
        }
        // Until the stored state is restored, a context the caller may use answers "starting", never "unknown":
        // socket activation wakes the daemon for exactly these callers.
        if !keeper.restored.hasFired, access.mayUse(peer, context) {
            throw ServiceError(code: .sessionUnavailable, message: "Session unavailable: the daemon is starting",
                               data: ["state": "starting",
                                      "retry_at": JSONText.timestamp(Date().addingTimeInterval(1))])
        }
        // Unknown and forbidden answer alike: names cannot be probed.
        guard access.mayUse(peer, context), await keeper.schedule(context) != nil else {
            throw ServiceError(code: .unknownContext, message: "Unknown context: \(context)")
        }
        return context
    }

    private func requireAdmin(_ peer: PeerCredentials, _ method: RPCMethod) throws {
        guard access.isAdmin(peer) else {
            throw ServiceError(code: .permissionDenied, message: "Permission denied: \(method.rawValue) is for admins")
        }
    }

    private func call(_ method: RPCMethod, _ request: RPCRequest, peer: PeerCredentials,
                      subscribe: @Sendable ([String]) -> Void) async throws -> String {
        switch method {
        case .sessionGet:
            let context = try await requireContext(request, peer)
            if case .granted(let json) = sessionGetFast(context: context, peer: peer, counted: false) {
                // Granted in the meantime: reuse the serialized result.
                return String(decoding: json, as: UTF8.self)
            }
            throw unavailable(context, await keeper.tokenGrant(context))

        case .requestSign:
            let context = try await requireContext(request, peer)
            let body: [UInt8]
            if let text = request.string("body") {
                body = Array(text.utf8)
            } else if let encoded = request.string("body_base64") {
                guard let data = Data(base64Encoded: encoded) else {
                    throw ServiceError(code: .invalidParams, message: "Invalid params: body_base64 is not valid base64")
                }
                body = Array(data)
            } else {
                throw ServiceError(code: .invalidParams, message: "Invalid params: body (string) or body_base64 is required")
            }
            return RPCJSON.encode(RPCResult.Signature(signature: try await keeper.sign(context, body: body)))

        case .sessionRenew:
            let context = try await requireContext(request, peer)
            // Coalesced and bounded: a renewal under way is joined, and within renewal.min_manual_interval of the
            // last one the current session is the answer; only an admin's `force: true` goes past that.
            let force = request.bool("force") == true && access.isAdmin(peer)
            switch await keeper.manualRenewal(context, force: force) {
            case .success(let renewal)?:
                return RPCJSON.encode(RPCResult.Renewal(generation: renewal.generation, expiresAt: renewal.expiresAt,
                                                        renewed: renewal.renewed))
            case .failure(let error)?:
                throw error.kind == .needsAttention
                    ? ServiceError(code: .needsAttention, message: "Needs attention: \(error.message)",
                                   data: ["state": "needs_attention", "reason": error.code.description])
                    : ServiceError(code: .upstreamFailure, message: "Renewal failed: \(error.message)")
            case nil:
                throw ServiceError(code: .unknownContext, message: "Unknown context: \(context)")
            }

        case .sessionReportInvalid:
            let context = try await requireContext(request, peer)
            guard let generation = request.integer("generation") else {
                throw ServiceError(code: .invalidParams, message: "Invalid params: generation (an integer) is required")
            }
            let renewed = try await keeper.reportInvalid(context, generation: generation)
            return RPCJSON.encode(RPCResult.Replacement(generation: renewed.generation, expiresAt: renewed.expiresAt))

        case .sessionSubscribe:
            var contexts: [String]
            if request.params["context"] != nil {
                contexts = [try await requireContext(request, peer)]
            } else {
                contexts = await keeper.contextNames().filter { access.mayUse(peer, $0) }
            }
            contexts.sort()
            subscribe(contexts)
            return RPCJSON.encode(RPCResult.Subscribed(subscribed: contexts))

        case .contextList:
            var items: [RPCResult.ContextSummary] = []
            for name in await keeper.contextNames() where access.mayUse(peer, name) {
                guard let schedule = await keeper.schedule(name) else { continue }
                items.append(RPCResult.ContextSummary(
                    name: name, kind: keeper.sessions.entry(name)?.kind.rawValue ?? "unknown", state: schedule.state.rawValue,
                    userId: schedule.userId, expiresAt: schedule.expiresAt, renewAt: schedule.renewAt))
            }
            return RPCJSON.encode(RPCResult.ContextList(contexts: items))

        case .contextStatus:
            let context = try await requireContext(request, peer)
            guard let schedule = await keeper.schedule(context) else {
                throw ServiceError(code: .unknownContext, message: "Unknown context: \(context)")
            }
            return RPCJSON.encode(Self.status(context, schedule, kind: keeper.sessions.entry(context)?.kind))

        case .contextRemove:
            try requireAdmin(peer, method)
            let context = try await requireContext(request, peer)
            try await keeper.removeContext(context)
            return "{}"

        case .oauthAuthorizeURL:
            try requireAdmin(peer, method)
            let authorization = try await keeper.oauthAuthorizeURL(redirectURI: request.string("redirect_uri"))
            return RPCJSON.encode(RPCResult.AuthorizeURL(url: authorization.url, state: authorization.state,
                                                         expiresAt: authorization.expiresAt))

        case .oauthComplete:
            try requireAdmin(peer, method)
            guard let code = request.string("code"), let state = request.string("state") else {
                throw ServiceError(code: .invalidParams, message: "Invalid params: code and state (strings) are required")
            }
            let name = try await keeper.completeOAuth(code: code, state: state, name: request.string("name"))
            return RPCJSON.encode(RPCResult.Connected(context: name))

        case .daemonStatus:
            // For an admin, from the published snapshots' counts: O(1) however many contexts there are. Anyone
            // else counts only the contexts it may see, as context.list shows them.
            let admin = access.isAdmin(peer)
            let published = admin ? keeper.sessions.stateCounts
                : keeper.sessions.stateCounts { [access] name in access.mayUse(peer, name) }
            var contexts = Dictionary(uniqueKeysWithValues: ContextState.allCases.filter { $0 != .removed }
                .map { ($0.rawValue, published[$0] ?? 0) })
            contexts["total"] = admin ? keeper.sessions.count : published.values.reduce(0, +)
            let health = keeper.storeHealth
            let backend = keeper.configuration.state.backend.rawValue
            return RPCJSON.encode(RPCResult.DaemonStatus(
                version: BunqSessiondVersion.current,
                uptimeSeconds: Int(Date().timeIntervalSince(keeper.startedAt)),
                ready: ready.load(ordering: .acquiring),
                starting: !keeper.restored.hasFired,
                contexts: contexts,
                nextRenewalAt: await keeper.registry.nextDeadline(),
                // As last checked (every 10 s): a caller cannot make the daemon run the forecast.
                budget: .init(sessionServer: Self.budget(keeper.budget)),
                cluster: await keeper.clusterStatus().map(Self.cluster),
                // The store's health: tokens and signatures are served from memory whatever it says.
                store: .init(backend: backend, reachable: health.reachable, failingSince: health.failingSince,
                             consecutiveFailures: health.consecutiveFailures),
                // Where the state is, and what the store last said, for admins only (`bunq-sessionctl backup`
                // copies it from there).
                state: admin ? .init(backend: backend, directory: keeper.configuration.state.directory,
                                     lastError: health.lastError) : nil))
        }
    }

    /// `daemon.status.cluster`: this daemon, its leases and the members the last lease round saw.
    static func cluster(_ cluster: ClusterStatus) -> RPCResult.DaemonStatus.Cluster {
        .init(instance: cluster.instance, egressGroup: cluster.egressGroup, leasesHeld: cluster.leasesHeld,
              storeReachable: cluster.storeReachable,
              members: cluster.members.map { .init(instance: $0.instance, egressGroup: $0.egressGroup, leases: $0.leases) })
    }

    /// `daemon.status.budget.session_server`: demand, supply and utilisation; `will_run_late` (the count) above 100%.
    static func budget(_ budget: BudgetStatus) -> RPCResult.DaemonStatus.SessionServerBudget {
        .init(neededPerDay: (budget.neededPerDay * 10).rounded() / 10,
              availablePerDay: budget.availablePerDay.isFinite ? (budget.availablePerDay * 10).rounded() / 10 : nil,
              utilisation: (budget.utilisation * 1_000).rounded() / 1_000,
              willRunLate: budget.late.isEmpty ? nil : budget.late.count)
    }

    private func unavailable(_ context: String, _ grant: TokenGrant?) -> ServiceError {
        guard case .unavailable(let state, let retryAt, let reason)? = grant else {
            return ServiceError(code: .sessionUnavailable, message: "Session unavailable", data: ["state": "renewing"])
        }
        if state == .needsAttention {
            return ServiceError(code: .needsAttention, message: "Needs attention: retrying cannot help until a human acts",
                                data: ["state": state.rawValue, "reason": reason ?? "needs_attention"])
        }
        var data = ["state": state.rawValue]
        data["retry_at"] = retryAt.map(JSONText.timestamp)
        return ServiceError(code: .sessionUnavailable, message: "Session unavailable for \(context)", data: data)
    }

    static func status(_ context: String, _ schedule: ContextSchedule, kind: StoredContext.Kind?) -> RPCResult.ContextStatus {
        .init(context: context, kind: kind?.rawValue ?? "unknown", state: schedule.state.rawValue, userId: schedule.userId,
              generation: schedule.generation, expiresAt: schedule.expiresAt, renewAt: schedule.renewAt,
              lastRenewedAt: schedule.lastRenewedAt, consecutiveFailures: schedule.consecutiveFailures,
              nextRetryAt: schedule.nextRetryAt, lastError: schedule.lastError, reason: schedule.reason)
    }

    /// What a subscriber is told when a context is no longer its to watch: removed, or its access revoked. The
    /// same words for both, so a caller cannot tell which.
    static func forbidden(_ context: String) -> [UInt8] {
        RPCCodec.notification("context.state", RPCNotification.StateChanged(
            context: context, state: "forbidden", reason: "the context is not available to this caller"))
    }

    /// The notification for a scheduler event, or nil when the event is not for this subscriber.
    static func notification(_ event: SchedulerEvent, _ entry: SessionEntry?,
                             now: AnyClock.Instant) -> (context: String, line: [UInt8])? {
        switch event {
        case .rotated(let context, let generation, let expiresAt):
            guard let token = entry?.session?.token else { return nil }
            return (context, RPCCodec.notification("session.rotated", RPCNotification.Rotated(
                context: context, generation: generation, token: token, expiresAt: expiresAt)))
        case .failed(let context, let error, _, _, _):
            let state = error.kind == .needsAttention ? ContextState.needsAttention
                : (entry?.grantable(at: now) != nil ? .retrying : .expired)
            return (context, RPCCodec.notification("context.state", RPCNotification.StateChanged(
                context: context, state: state.rawValue, reason: error.message)))
        case .removed(let context):
            return (context, forbidden(context))
        }
    }
}
