import Foundation
import Synchronization

/// The admin API under `/_sandbox/`, for tests: stats, faults, revocations, killed sessions, per-user timeouts,
/// extra accounts, OAuth approvals. Loopback clients only.
extension BunqSandbox {
    func admin(_ request: ServerRequest, _ headers: [(String, String)]) -> ServerResponse {
        func json(_ status: Int, _ body: BunqJSON) -> ServerResponse {
            ServerResponse(status: status, headers: headers + [("Content-Type", "application/json")], body: body.serialized)
        }
        func failure(_ error: SandboxError) -> ServerResponse { json(error.status, .error(error.description)) }

        guard request.remoteIP == "127.0.0.1" || request.remoteIP == "::1" || request.remoteIP.hasPrefix("127.") else {
            return failure(SandboxError(403, "The sandbox admin API answers loopback clients only."))
        }
        let body = request.body.isEmpty ? [:]
            : (try? JSONSerialization.jsonObject(with: Data(request.body))) as? [String: Any]
        guard let body else { return failure(.badRequest("The request body is not a JSON object.")) }

        switch (request.method, request.path) {
        case ("GET", "/_sandbox/stats"):
            return json(200, stats())
        case ("GET", "/_sandbox/callbacks"):
            return json(200, .object([("callbacks", .array(callbacks.log.map(\.json)))]))
        case ("GET", "/_sandbox/faults"):
            return json(200, .object([("faults", .array(faults.withLock { $0.rules.map(\.json) }))]))
        case ("POST", "/_sandbox/faults"):
            do {
                let rule = try faults.withLock { state throws(SandboxError) in
                    let rule = try FaultRule.parse(body, id: state.nextId)
                    state.nextId += 1
                    state.rules.append(rule)
                    return rule
                }
                return json(200, rule.json)
            } catch {
                return failure(error)
            }
        case ("DELETE", "/_sandbox/faults"):
            faults.withLock { $0.rules.removeAll() }
            return json(200, .object([]))
        case ("POST", "/_sandbox/revoke"):
            guard let secret = body["secret"] as? String else {
                return failure(.badRequest("Field secret is required: an API key, PSD2 token_value or access token."))
            }
            // As at bunq, a revoked key or grant ends its live sessions too.
            let killed: Int? = store.withLock { store in
                guard store.credentials[secret] != nil else { return nil }
                store.credentials[secret]?.revoked = true
                return store.killSessions(now: configuration.now) { $0.secret == secret }
            }
            guard let killed else { return failure(.notFound("Credential")) }
            return json(200, .object([("revoked", true), ("sessions_ended", .int(killed))]))
        case ("POST", "/_sandbox/sessions/kill"):
            return killSessions(body, json: json, failure: failure)
        case ("POST", "/_sandbox/users/session-timeout"):
            return setSessionTimeout(body, json: json, failure: failure)
        case ("POST", "/_sandbox/accounts"):
            return addAccounts(body, json: json, failure: failure)
        case ("POST", "/_sandbox/oauth/approve-as"):
            return approveAs(body, json: json, failure: failure)
        case ("POST", let path) where path.hasPrefix("/_sandbox/draft-payments/"):
            return answerDraft(Int(path.dropFirst("/_sandbox/draft-payments/".count)), body, json: json, failure: failure)
        default:
            return failure(.notFound("Sandbox admin route"))
        }
    }

    /// `POST /_sandbox/sessions/kill {"token": T}` | `{"user_id": N}` | `{"all": true}`: ends live sessions
    /// server-side, as bunq does when a user logs out everywhere or support intervenes.
    private func killSessions(_ body: [String: Any], json: (Int, BunqJSON) -> ServerResponse,
                              failure: (SandboxError) -> ServerResponse) -> ServerResponse {
        let now = configuration.now
        let killed: Int
        if let token = body["token"] as? String {
            killed = store.withLock { $0.killSessions(now: now) { $0.token == token } }
        } else if let userId = body["user_id"] as? Int {
            killed = store.withLock { store in
                // A user's sessions include those of OAuth grants it gave or asked for.
                let grants = Set(store.apiKeyUsers.values.filter {
                    $0.grantingUserId == userId || $0.requestingUserId == userId
                }.map(\.id))
                return store.killSessions(now: now) { $0.userId == userId || grants.contains($0.userId) }
            }
        } else if body["all"] as? Bool == true {
            killed = store.withLock { $0.killSessions(now: now) { _ in true } }
        } else {
            return failure(.badRequest("Give token, user_id, or all: true."))
        }
        return json(200, .object([("killed", .int(killed))]))
    }

    /// The user named by `api_key` or `user_id` in an admin request.
    private static func userId(_ body: [String: Any], in store: SandboxStore) -> Result<Int, SandboxError> {
        if let apiKey = body["api_key"] as? String {
            guard let credential = store.credentials[apiKey] else { return .failure(.notFound("Credential")) }
            return .success(credential.userId)
        }
        if let userId = body["user_id"] as? Int {
            guard store.users[userId] != nil || store.apiKeyUsers[userId] != nil else { return .failure(.notFound("User")) }
            return .success(userId)
        }
        return .failure(.badRequest("Give api_key or user_id."))
    }

    /// `POST /_sandbox/users/session-timeout {"api_key"|"user_id", "session_timeout": S}`: the user's own
    /// auto-logout time, as its owner sets it in the bunq app; null restores the default.
    private func setSessionTimeout(_ body: [String: Any], json: (Int, BunqJSON) -> ServerResponse,
                                   failure: (SandboxError) -> ServerResponse) -> ServerResponse {
        let timeout = body["session_timeout"] as? Int
        if let timeout, timeout < 1 { return failure(.badRequest("Field session_timeout must be at least 1 second.")) }
        if timeout == nil, !(body["session_timeout"] is NSNull) {
            return failure(.badRequest("Field session_timeout is required (seconds, or null for the default)."))
        }
        let outcome: Result<Int, SandboxError> = store.withLock { store in
            Self.userId(body, in: store).flatMap { userId in
                // An OAuth grant's sessions follow the requesting user's timeout.
                let ownerId = store.apiKeyUsers[userId]?.requestingUserId ?? userId
                store.users[ownerId]?.sessionTimeout = timeout
                return .success(ownerId)
            }
        }
        switch outcome {
        case .success(let userId):
            return json(200, .object([("user_id", .int(userId)), ("session_timeout", timeout.map { .int($0) } ?? .null)]))
        case .failure(let error): return failure(error)
        }
    }

    /// `POST /_sandbox/accounts {"api_key"|"user_id", "type": "MonetaryAccountSavings", "count": N}`: more
    /// accounts for a user (lists long enough to page through).
    private func addAccounts(_ body: [String: Any], json: (Int, BunqJSON) -> ServerResponse,
                             failure: (SandboxError) -> ServerResponse) -> ServerResponse {
        guard let kind = MonetaryAccount.Kind(rawValue: (body["type"] as? String) ?? "MonetaryAccountBank") else {
            return failure(.badRequest("Field type must be one of "
                + MonetaryAccount.Kind.allCases.map(\.rawValue).joined(separator: ", ") + "."))
        }
        let count = (body["count"] as? Int) ?? 1
        guard (1...1_000).contains(count) else { return failure(.badRequest("Field count must be 1 to 1000.")) }
        let now = configuration.now
        let outcome: Result<[Int], SandboxError> = store.withLock { store in
            Self.userId(body, in: store).flatMap { userId in
                guard let user = store.users[userId], user.kind != .serviceProvider else {
                    return .failure(.badRequest("Only sandbox persons and companies have accounts."))
                }
                return .success((0..<count).map { _ in store.addAccount(kind, ownerId: userId, now: now).id })
            }
        }
        switch outcome {
        case .success(let ids): return json(200, .object([("ids", .array(ids.map { .int($0) }))]))
        case .failure(let error): return failure(error)
        }
    }

    private func approveAs(_ body: [String: Any], json: (Int, BunqJSON) -> ServerResponse,
                           failure: (SandboxError) -> ServerResponse) -> ServerResponse {
        let outcome: Result<Int?, SandboxError> = store.withLock { store in
            if let apiKey = body["api_key"] as? String {
                guard case .apiKey(let userId)? = store.credentials[apiKey]?.kind else {
                    return .failure(.notFound("Sandbox user with that API key"))
                }
                store.approvingUserId = userId
            } else if let userId = body["user_id"] as? Int {
                guard let user = store.users[userId], user.kind != .serviceProvider else {
                    return .failure(.notFound("Sandbox user"))
                }
                store.approvingUserId = userId
            } else if body.keys.contains("user_id") {
                store.approvingUserId = nil
            } else {
                return .failure(.badRequest("Give api_key or user_id (null: a fresh user for each authorization)."))
            }
            return .success(store.approvingUserId)
        }
        switch outcome {
        case .success(let userId): return json(200, .object([("user_id", userId.map { .int($0) } ?? .null)]))
        case .failure(let error): return failure(error)
        }
    }

    /// `POST /_sandbox/draft-payments/{id} {"status": "ACCEPTED"|"REJECTED"}`: the account holder answers a draft
    /// payment or a provider's draft payment, as in the bunq app. Accepting pays at once, or is refused (400) when
    /// the balance does not cover it, and the draft stays pending.
    private func answerDraft(_ id: Int?, _ body: [String: Any], json: (Int, BunqJSON) -> ServerResponse,
                             failure: (SandboxError) -> ServerResponse) -> ServerResponse {
        guard let id else { return failure(.notFound("Draft payment")) }
        let status = body["status"] as? String
        guard status == "ACCEPTED" || status == "REJECTED" else {
            return failure(.badRequest("Field status must be ACCEPTED or REJECTED."))
        }
        let now = configuration.now
        let (outcome, owed): (Result<String, SandboxError>, [CallbackJob]) = store.withLock { store in
            do throws(SandboxError) {
                return (.success(try store.answerDraft(id, accept: status == "ACCEPTED", now: now)), store.takeCallbacks())
            } catch {
                return (.failure(error), store.takeCallbacks())
            }
        }
        if !owed.isEmpty { callbacks.enqueue(owed) }
        switch outcome {
        case .success(let status): return json(200, .object([("id", .int(id)), ("status", .string(status))]))
        case .failure(let error): return failure(error)
        }
    }

    private func stats() -> BunqJSON {
        store.withLock { store in
            .object([
                ("installations", .int(store.stats.installations)),
                ("device_servers", .int(store.stats.deviceServers)),
                ("sessions_created", .int(store.stats.sessionsCreated)),
                ("sessions_active", .int(store.liveSessionCount)),
                ("requests", .object(store.stats.requests.sorted { $0.key < $1.key }.map { ($0.key, .int($0.value)) })),
                ("rejected_signatures", .int(store.stats.rejectedSignatures)),
                ("rate_limited", .int(store.stats.rateLimited)),
                ("sessions_killed", .int(store.stats.sessionsKilled)),
                ("request_ids_rejected", .int(store.stats.requestIdsRejected)),
                ("users", .int(store.users.count)),
                ("oauth_clients", .int(store.oauthClients.count)),
            ])
        }
    }
}
