import DynamicJSON
import Foundation

extension SandboxStore {
    // MARK: OAuth clients (a provider's session)

    func oauthClientObject(_ client: OAuthClient) -> BunqJSON {
        .object([
            ("id", .int(client.id)),
            ("created", .string(BunqTime.format(client.created))),
            ("updated", .string(BunqTime.format(client.updated))),
            ("status", .string(client.status)),
            ("display_name", .string(users[client.userId]?.displayName ?? "")),
            ("client_id", .string(client.clientId)),
            ("secret", .string(client.secret)),
            ("callback_url", .array(client.callbacks.map(callbackObject))),
        ])
    }

    func callbackObject(_ callback: OAuthCallback) -> BunqJSON {
        .object([("id", .int(callback.id)), ("created", .string(BunqTime.format(callback.created))),
                 ("updated", .string(BunqTime.format(callback.created))), ("url", .string(callback.url))])
    }

    mutating func createOAuthClient(_ call: CallContext) throws(SandboxError) -> BunqJSON {
        let session = try requireOwnUser(call)
        let status = call.body["status"]?.string ?? "ACTIVE"
        guard ["ACTIVE", "CANCELLED"].contains(status) else { throw .badRequest("Status \(status) is not allowed.") }
        // bunq allows one OAuth client per user at a time.
        if oauthClients.values.contains(where: { $0.userId == session.userId && $0.status == "ACTIVE" }) {
            throw .badRequest("User already has an active OAuth client. Only one is allowed.")
        }
        let client = OAuthClient(id: nextId("oauth-client", base: 40), userId: session.userId, created: call.now,
                                 updated: call.now, status: status, clientId: Self.token(), secret: Self.token())
        oauthClients[client.id] = client
        return .response([("Id", .object([("id", .int(client.id))]))])
    }

    func listOAuthClients(_ call: CallContext) throws(SandboxError) -> BunqJSON {
        let session = try requireOwnUser(call)
        let clients = oauthClients.values.filter { $0.userId == session.userId }
        let (page, pagination) = try ListPage.parse(call.query).apply(clients, id: \.id,
                                                                         path: "/v1/user/\(session.userId)/oauth-client")
        return .response(page.map { ("OauthClient", oauthClientObject($0)) }, pagination: pagination)
    }

    func oauthClient(_ call: CallContext) throws(SandboxError) -> BunqJSON {
        let client = try ownClient(call)
        return .response([("OauthClient", oauthClientObject(client))])
    }

    mutating func updateOAuthClient(_ call: CallContext) throws(SandboxError) -> BunqJSON {
        var client = try ownClient(call)
        if let status = call.body["status"]?.string {
            guard ["ACTIVE", "CANCELLED"].contains(status) else { throw .badRequest("Status \(status) is not allowed.") }
            client.status = status
        }
        client.updated = call.now
        oauthClients[client.id] = client
        return .response([("Id", .object([("id", .int(client.id))]))])
    }

    mutating func createCallback(_ call: CallContext) throws(SandboxError) -> BunqJSON {
        var client = try ownClient(call)
        let url = try Self.callbackURL(call.body["url"])
        let callback = OAuthCallback(id: nextId("callback", base: 700), created: call.now, url: url)
        client.callbacks.append(callback)
        oauthClients[client.id] = client
        return .response([("Id", .object([("id", .int(callback.id))]))])
    }

    func listCallbacks(_ call: CallContext) throws(SandboxError) -> BunqJSON {
        let client = try ownClient(call)
        let (page, pagination) = try ListPage.parse(call.query).apply(
            client.callbacks, id: \.id, path: "/v1/user/\(client.userId)/oauth-client/\(client.id)/callback-url")
        return .response(page.map { ("OauthCallbackUrl", callbackObject($0)) }, pagination: pagination)
    }

    func callback(_ call: CallContext) throws(SandboxError) -> BunqJSON {
        let client = try ownClient(call)
        guard let callback = client.callbacks.first(where: { $0.id == call.pathIds.last }) else {
            throw .notFound("Callback URL")
        }
        return .response([("OauthCallbackUrl", callbackObject(callback))])
    }

    mutating func updateCallback(_ call: CallContext) throws(SandboxError) -> BunqJSON {
        var client = try ownClient(call)
        guard let index = client.callbacks.firstIndex(where: { $0.id == call.pathIds.last }) else {
            throw .notFound("Callback URL")
        }
        let url = try Self.callbackURL(call.body["url"])
        let old = client.callbacks[index]
        client.callbacks[index] = OAuthCallback(id: old.id, created: old.created, url: url)
        oauthClients[client.id] = client
        return .response([("Id", .object([("id", .int(old.id))]))])
    }

    mutating func deleteCallback(_ call: CallContext) throws(SandboxError) -> BunqJSON {
        var client = try ownClient(call)
        guard let index = client.callbacks.firstIndex(where: { $0.id == call.pathIds.last }) else {
            throw .notFound("Callback URL")
        }
        client.callbacks.remove(at: index)
        oauthClients[client.id] = client
        return .response([])
    }

    static func callbackURL(_ value: JSONValue?) throws(SandboxError) -> String {
        guard let url = value?.string, let components = URLComponents(string: url),
              components.scheme != nil, components.host != nil else {
            throw .badRequest("Field url must be an absolute URL.")
        }
        return url
    }

    private func ownClient(_ call: CallContext) throws(SandboxError) -> OAuthClient {
        let session = try requireOwnUser(call)
        guard call.pathIds.count >= 2, let client = oauthClients[call.pathIds[1]], client.userId == session.userId else {
            throw .notFound("OAuth client")
        }
        return client
    }

    // MARK: GET /auth — the authorize page, approved at once by the chosen sandbox user

    enum AuthorizeOutcome {
        case redirect(String)
        case refused(String)
    }

    mutating func authorize(query: [String: String], now: Date) -> AuthorizeOutcome {
        guard query["response_type"] == "code" else { return .refused("response_type must be code.") }
        guard let clientId = query["client_id"],
              let client = oauthClients.values.first(where: { $0.clientId == clientId }), client.status == "ACTIVE" else {
            return .refused("Unknown or inactive client_id.")
        }
        // Redirect URIs must match a registered callback byte for byte, as with bunq.
        guard let redirectURI = query["redirect_uri"], client.callbacks.contains(where: { $0.url == redirectURI }) else {
            return .refused("The redirect_uri is not registered for this client.")
        }
        let granting = approvingUserId.flatMap { users[$0] } ?? createSandboxUser(.person, now: now).user
        let code = Self.token()
        authorizationCodes[code] = AuthorizationCode(
            clientId: clientId, redirectURI: redirectURI, state: query["state"], grantingUserId: granting.id,
            expiresAt: now.addingTimeInterval(TimeInterval(configuration.authorizationCodeLifetime)))
        var location = URLComponents(string: redirectURI) ?? URLComponents()
        var items = location.queryItems ?? []
        items.append(URLQueryItem(name: "code", value: code))
        if let state = query["state"] { items.append(URLQueryItem(name: "state", value: state)) }
        location.queryItems = items
        return .redirect(location.string ?? redirectURI)
    }

    // MARK: POST /v1/token — authorization code exchange

    mutating func exchangeCode(_ parameters: [String: String], now: Date) -> (status: Int, body: BunqJSON) {
        func oauthError(_ status: Int, _ error: String, _ description: String) -> (Int, BunqJSON) {
            (status, .object([("error", .string(error)), ("error_description", .string(description))]))
        }
        guard parameters["grant_type"] == "authorization_code" else {
            return oauthError(400, "unsupported_grant_type", "The grant_type must be authorization_code.")
        }
        guard let client = oauthClients.values.first(where: { $0.clientId == parameters["client_id"] }),
              client.status == "ACTIVE", client.secret == parameters["client_secret"] else {
            return oauthError(401, "invalid_client", "The client credentials are invalid.")
        }
        guard let codeValue = parameters["code"], var code = authorizationCodes[codeValue], !code.used,
              now < code.expiresAt, code.clientId == client.clientId, code.redirectURI == parameters["redirect_uri"]
        else {
            return oauthError(400, "invalid_grant", "The authorization code is invalid or expired.")
        }
        code.used = true
        authorizationCodes[codeValue] = code
        let apiKeyUser = UserApiKey(id: nextId("user", base: 1_800_000), created: now, requestingUserId: client.userId,
                                    grantingUserId: code.grantingUserId)
        apiKeyUsers[apiKeyUser.id] = apiKeyUser
        let accessToken = Self.token()
        credentials[accessToken] = Credential(kind: .oauth(apiKeyUserId: apiKeyUser.id), issued: now)
        var body: [(String, BunqJSON)] = [("access_token", .string(accessToken)), ("token_type", "bearer")]
        if let state = code.state { body.append(("state", .string(state))) }
        return (200, .object(body))
    }
}
