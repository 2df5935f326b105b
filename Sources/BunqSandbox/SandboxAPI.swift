import BunqCrypto
import Foundation

/// What a handler knows about the caller once authentication and signature checks passed.
struct CallContext: Sendable {
    let body: [String: any Sendable]
    let pathIds: [Int]
    let installation: Installation?
    let session: Session?
    let now: Date
}

extension SandboxStore {
    // MARK: Sandbox users

    mutating func sandboxUser(_ kind: SandboxUser.Kind, _ call: CallContext) -> BunqJSON {
        let (_, apiKey) = createSandboxUser(kind, now: call.now)
        return .response([("ApiKey", .object([("api_key", .string(apiKey))]))])
    }

    // MARK: POST /v1/installation

    mutating func installation(_ call: CallContext) throws(SandboxError) -> BunqJSON {
        guard let pem = call.body["client_public_key"] as? String else {
            throw .badRequest("Field client_public_key is required.")
        }
        let key: RSAPublicKey
        do {
            key = try RSAPublicKey(pem: pem)
        } catch {
            throw .badRequest("The public key is invalid: \(error.message)")
        }
        let id = nextId("installation", base: 100)
        let installation = Installation(
            id: id, tokenId: nextId("token", base: 10_000), token: Self.token(), created: call.now,
            clientPublicKey: key, clientPublicKeyPEM: pem, serverKeyIndex: id % serverPublicKeyPEMs.count)
        installations[installation.token] = installation
        installationsById[id] = installation
        stats.installations += 1
        let created = BunqTime.format(call.now)
        return .response([
            ("Id", .object([("id", .int(id))])),
            ("Token", .object([("id", .int(installation.tokenId)), ("created", .string(created)),
                               ("updated", .string(created)), ("token", .string(installation.token))])),
            ("ServerPublicKey", .object([("server_public_key", .string(serverPublicKeyPEMs[installation.serverKeyIndex]))])),
        ])
    }

    // MARK: POST /v1/payment-service-provider-credential

    mutating func psd2Credential(_ call: CallContext) throws(SandboxError) -> BunqJSON {
        guard let installation = call.installation,
              let leafPEM = call.body["client_payment_service_provider_certificate"] as? String,
              let chainPEM = call.body["client_payment_service_provider_certificate_chain"] as? String,
              let signature = call.body["client_public_key_signature"] as? String else {
            throw .badRequest("Fields client_payment_service_provider_certificate, "
                + "client_payment_service_provider_certificate_chain and client_public_key_signature are required.")
        }
        let leaf: Certificate
        do {
            leaf = try Certificate(pem: leafPEM)
            _ = try Certificate.chain(pem: chainPEM)
        } catch {
            throw .badRequest("The certificate or certificate chain is invalid: \(error.message)")
        }
        guard leaf.isValid(at: call.now) else { throw .badRequest("The certificate is expired or not yet valid.") }
        let roles = leaf.psd2Roles
        guard roles.contains(.aisp) || roles.contains(.pisp) else {
            throw .badRequest("The certificate's common name must name the PSD2 role AISP and/or PISP.")
        }
        let certificateKey: RSAPublicKey
        do {
            certificateKey = try leaf.publicKey()
        } catch {
            throw .badRequest("The certificate's public key is not usable: \(error.message)")
        }
        // Signed: the installation's public key PEM (ending in one newline) + the installation token. Accept the
        // PEM as the client sent it and in canonical form, which differ only in line endings.
        var sentPEM = installation.clientPublicKeyPEM
        while sentPEM.hasSuffix("\n") { sentPEM.removeLast() }
        let candidates = [sentPEM + "\n", (try? installation.clientPublicKey.pem()) ?? ""]
        guard candidates.contains(where: { pem in
            (try? certificateKey.verify(base64Signature: signature, for: Array((pem + installation.token).utf8))) != nil
        }) else {
            stats.rejectedSignatures += 1
            throw .badRequest("The client public key signature is invalid.")
        }
        let provider = users.values.first { $0.kind == .serviceProvider && $0.certificateDN == leaf.subject }
            ?? createUser(.serviceProvider, displayName: leaf.commonName, certificateDN: leaf.subject, now: call.now)
        let tokenValue = Self.token()
        credentials[tokenValue] = Credential(kind: .psd2(userId: provider.id))
        let created = BunqTime.format(call.now)
        return .response([("CredentialPasswordIp", .object([
            ("id", .int(nextId("credential", base: 40_000))),
            ("created", .string(created)),
            ("updated", .string(created)),
            ("status", "PENDING_FIRST_USE"),
            ("expiry_time", .string(BunqTime.format(call.now.addingTimeInterval(3_600)))),
            ("token_value", .string(tokenValue)),
            ("permitted_device", .null),
        ]))])
    }

    // MARK: POST /v1/device-server

    mutating func deviceServer(_ call: CallContext) throws(SandboxError) -> BunqJSON {
        guard let installation = call.installation else { throw .insufficientAuthentication }
        guard let description = call.body["description"] as? String, let secret = call.body["secret"] as? String else {
            throw .badRequest("Fields description and secret are required.")
        }
        guard let credential = credentials[secret], !credential.revoked else { throw .credentialsIncorrect }
        guard !description.isEmpty else { throw .badRequest("Field description must not be empty.") }
        // Registering the same secret again adds a device, as bunq does (and the stats show it).
        deviceBindings.insert(DeviceBinding(installationId: installation.id, secret: secret))
        stats.deviceServers += 1
        return .response([("Id", .object([("id", .int(nextId("device", base: 200)))]))])
    }

    // MARK: POST /v1/session-server

    mutating func sessionServer(_ call: CallContext) throws(SandboxError) -> BunqJSON {
        guard let installation = call.installation else { throw .insufficientAuthentication }
        guard let secret = call.body["secret"] as? String else { throw .badRequest("Field secret is required.") }
        guard var credential = credentials[secret], !credential.revoked,
              deviceBindings.contains(DeviceBinding(installationId: installation.id, secret: secret))
        else { throw .credentialsIncorrect }

        let userId: Int
        var lifetime = configuration.sessionTimeout
        switch credential.kind {
        case .apiKey(let id):
            userId = id
        case .psd2(let id):
            userId = id
            if credential.sessionsStarted == 0 { lifetime = configuration.psd2FirstSessionTimeout }
        case .oauth(let id):
            userId = id
        }
        credential.sessionsStarted += 1
        credentials[secret] = credential
        guard let userObject = userObject(userId) else { throw .credentialsIncorrect }

        if stats.sessionsCreated % 256 == 255 { pruneSessions(now: call.now) }
        let session = Session(id: nextId("session", base: 300), tokenId: nextId("token", base: 10_000),
                              token: Self.token(), installationId: installation.id, userId: userId,
                              created: call.now, expiresAt: call.now.addingTimeInterval(TimeInterval(lifetime)))
        sessions[session.token] = session
        stats.sessionsCreated += 1
        let created = BunqTime.format(call.now)
        return .response([
            ("Id", .object([("id", .int(session.id))])),
            ("Token", .object([("id", .int(session.tokenId)), ("created", .string(created)),
                               ("updated", .string(created)), ("token", .string(session.token))])),
            userObject,
        ])
    }

    // MARK: DELETE /v1/session/{id}

    mutating func deleteSession(_ call: CallContext) throws(SandboxError) -> BunqJSON {
        // As bunq's SDKs do, the id is ignored (they pass 0): the token names the session.
        guard let session = call.session else { throw .insufficientAuthentication }
        sessions[session.token]?.ended = true
        return .response([])
    }

    // MARK: Users and accounts

    func listUsers(_ call: CallContext) throws(SandboxError) -> BunqJSON {
        guard let session = call.session, let user = userObject(session.userId) else { throw .insufficientAuthentication }
        return .response([user])
    }

    func user(_ call: CallContext) throws(SandboxError) -> BunqJSON {
        let session = try requireOwnUser(call)
        guard let user = userObject(session.userId) else { throw .notFound("User") }
        return .response([user])
    }

    func monetaryAccounts(_ call: CallContext) throws(SandboxError) -> BunqJSON {
        let session = try requireOwnUser(call)
        let owners = accounts(visibleTo: session.userId)
        let base = "/v1/user/\(session.userId)/monetary-account"
        return .response(owners.map { ("MonetaryAccountBank", accountObject($0)) },
                         pagination: .object([("future_url", .string("\(base)?newer_id=\(owners.last?.accountId ?? 0)")),
                                              ("newer_url", .null), ("older_url", .null)]))
    }

    /// The session's own user id must be the `{userID}` of the URL.
    func requireOwnUser(_ call: CallContext) throws(SandboxError) -> Session {
        guard let session = call.session else { throw .insufficientAuthentication }
        guard call.pathIds.first == session.userId else { throw .insufficientAuthorisation }
        return session
    }
}

extension Error {
    /// The human part of an error, without internal codes.
    var message: String {
        (self as? CryptoError)?.message ?? "\(self)"
    }
}
