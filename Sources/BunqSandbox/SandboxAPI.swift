import BunqCrypto
import DynamicJSON
import Foundation

/// What a handler knows about the caller once authentication and signature checks passed.
struct CallContext: Sendable {
    /// The JSON body's members.
    let body: [String: JSONValue]
    /// The query parameters, percent-decoded.
    let query: [String: String]
    let pathIds: [Int]
    let installation: Installation?
    let session: Session?
    /// The caller's address: devices are bound to it.
    let remoteIP: String
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
        guard let pem = call.body["client_public_key"]?.string else {
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
            clientPublicKey: key, clientPublicKeyPEM: pem, serverKeyIndex: serverKeys.index(forInstallation: stats.installations))
        installations[installation.token] = installation
        installationsById[id] = installation
        stats.installations += 1
        let created = BunqTime.format(call.now)
        return .response([
            ("Id", .object([("id", .int(id))])),
            ("Token", .object([("id", .int(installation.tokenId)), ("created", .string(created)),
                               ("updated", .string(created)), ("token", .string(installation.token))])),
            ("ServerPublicKey", .object([("server_public_key", .string(serverKeys.publicKeyPEM(at: installation.serverKeyIndex)))])),
        ])
    }

    // MARK: POST /v1/payment-service-provider-credential

    mutating func psd2Credential(_ call: CallContext) throws(SandboxError) -> BunqJSON {
        guard let installation = call.installation,
              let leafPEM = call.body["client_payment_service_provider_certificate"]?.string,
              let chainPEM = call.body["client_payment_service_provider_certificate_chain"]?.string,
              let signature = call.body["client_public_key_signature"]?.string else {
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
        let window = configuration.apiKeyBindWindow > 0 ? configuration.apiKeyBindWindow : 3_600
        let record = PSD2CredentialRecord(id: nextId("credential", base: 40_000), created: call.now, userId: provider.id,
                                          tokenValue: tokenValue, expiry: call.now.addingTimeInterval(TimeInterval(window)))
        psd2Credentials[record.id] = record
        var credential = Credential(kind: .psd2(userId: provider.id), issued: call.now)
        credential.psd2CredentialId = record.id
        credentials[tokenValue] = credential
        return .response([("CredentialPasswordIp", psd2CredentialObject(record))])
    }

    /// A `CredentialPasswordIp` as bunq shows it: `expiry_time` and `token_value` only while `PENDING_FIRST_USE`,
    /// `permitted_device` only once `ACTIVE`.
    func psd2CredentialObject(_ record: PSD2CredentialRecord) -> BunqJSON {
        let device = record.permittedDeviceId.flatMap { devices[$0] }
        return .object([
            ("id", .int(record.id)),
            ("created", .string(BunqTime.format(record.created))),
            ("updated", .string(BunqTime.format(record.activated ?? record.created))),
            ("status", record.activated == nil ? "PENDING_FIRST_USE" : "ACTIVE"),
            ("expiry_time", record.activated == nil ? .string(BunqTime.format(record.expiry)) : .null),
            ("token_value", record.activated == nil ? .string(record.tokenValue) : .null),
            ("permitted_device", device.map { .object([("description", .string($0.description)),
                                                       ("ip", .string($0.ip))]) } ?? .null),
        ])
    }

    // MARK: GET /v1/payment-service-provider-credential/{id}

    func psd2CredentialRead(_ call: CallContext) throws(SandboxError) -> BunqJSON {
        guard let session = call.session else { throw .insufficientAuthentication }
        guard let record = call.pathIds.first.flatMap({ psd2Credentials[$0] }), record.userId == session.userId else {
            throw .notFound("Credential")
        }
        return .response([("CredentialPasswordIp", psd2CredentialObject(record))])
    }

    // MARK: POST /v1/device-server

    mutating func deviceServer(_ call: CallContext) throws(SandboxError) -> BunqJSON {
        guard let installation = call.installation else { throw .insufficientAuthentication }
        guard let description = call.body["description"]?.string, let secret = call.body["secret"]?.string else {
            throw .badRequest("Fields description and secret are required.")
        }
        let permittedIPs = try SandboxAddress.permittedIPs(call.body["permitted_ips"])
        guard var credential = credentials[secret], !credential.revoked else { throw .credentialsIncorrect }
        guard !description.isEmpty else { throw .badRequest("Field description must not be empty.") }
        // A new secret must be bound within the window; once bound, it stays usable.
        let window = TimeInterval(configuration.apiKeyBindWindow)
        if !credential.bound, window > 0, call.now.timeIntervalSince(credential.issued) > window {
            throw .credentialsIncorrect
        }
        // Registering the same secret again adds a device, as bunq does (and the stats show it).
        let device = Device(id: nextId("device", base: 200), installationId: installation.id, secret: secret,
                            description: description, ip: call.remoteIP, permittedIPs: permittedIPs, created: call.now)
        devices[device.id] = device
        deviceBindings[DeviceBinding(installationId: installation.id, secret: secret), default: []].append(device.id)
        if !credential.bound, let recordId = credential.psd2CredentialId {
            psd2Credentials[recordId]?.activated = call.now
            psd2Credentials[recordId]?.permittedDeviceId = device.id
        }
        credential.bound = true
        credentials[secret] = credential
        stats.deviceServers += 1
        return .response([("Id", .object([("id", .int(device.id))]))])
    }

    // MARK: GET /v1/device-server, /v1/device-server/{id}

    /// The devices of the session's user, newest first.
    private func ownDevices(_ session: Session) -> [Device] {
        let userId = credentials[session.secret]?.userId
        return devices.values.filter { credentials[$0.secret]?.userId == userId }
    }

    func deviceObject(_ device: Device) -> BunqJSON {
        let created = BunqTime.format(device.created)
        return .object([("id", .int(device.id)), ("created", .string(created)), ("updated", .string(created)),
                        ("description", .string(device.description)), ("ip", .string(device.ip)),
                        ("status", "ACTIVE")])
    }

    func listDevices(_ call: CallContext) throws(SandboxError) -> BunqJSON {
        guard let session = call.session else { throw .insufficientAuthentication }
        let (page, pagination) = try ListPage.parse(call.query).apply(ownDevices(session), id: \.id,
                                                                         path: "/v1/device-server")
        return .response(page.map { ("DeviceServer", deviceObject($0)) }, pagination: pagination)
    }

    func device(_ call: CallContext) throws(SandboxError) -> BunqJSON {
        guard let session = call.session else { throw .insufficientAuthentication }
        guard let device = ownDevices(session).first(where: { $0.id == call.pathIds.first }) else {
            throw .notFound("DeviceServer")
        }
        return .response([("DeviceServer", deviceObject(device))])
    }

    // MARK: GET /v1/installation, /v1/installation/{id}, /v1/installation/{id}/server-public-key

    func listInstallations(_ call: CallContext) throws(SandboxError) -> BunqJSON {
        guard let session = call.session else { throw .insufficientAuthentication }
        return .response([("Id", .object([("id", .int(session.installationId))]))],
                         pagination: .object([("future_url", .null), ("newer_url", .null), ("older_url", .null)]))
    }

    func installationRead(_ call: CallContext) throws(SandboxError) -> BunqJSON {
        guard let session = call.session else { throw .insufficientAuthentication }
        guard call.pathIds.first == session.installationId else { throw .notFound("Installation") }
        return .response([("Id", .object([("id", .int(session.installationId))]))])
    }

    func serverPublicKey(_ call: CallContext) throws(SandboxError) -> BunqJSON {
        guard let session = call.session else { throw .insufficientAuthentication }
        guard call.pathIds.first == session.installationId, let installation = installationsById[session.installationId]
        else { throw .notFound("Installation") }
        return .response([("ServerPublicKey", .object([
            ("server_public_key", .string(serverKeys.publicKeyPEM(at: installation.serverKeyIndex))),
        ]))])
    }

    // MARK: POST /v1/session-server

    mutating func sessionServer(_ call: CallContext) throws(SandboxError) -> BunqJSON {
        guard let installation = call.installation else { throw .insufficientAuthentication }
        guard let secret = call.body["secret"]?.string else { throw .badRequest("Field secret is required.") }
        // The secret must be bound to this installation by a device that permits the caller's address.
        let bound = (deviceBindings[DeviceBinding(installationId: installation.id, secret: secret)] ?? [])
            .compactMap { devices[$0] }
        guard var credential = credentials[secret], !credential.revoked,
              let device = bound.last(where: { $0.permits(call.remoteIP) })
        else { throw .credentialsIncorrect }

        let userId = credential.userId
        var lifetime = sessionTimeout(of: userId)
        if case .psd2 = credential.kind, credential.sessionsStarted == 0 {
            lifetime = configuration.psd2FirstSessionTimeout
        }
        credential.sessionsStarted += 1
        credentials[secret] = credential
        guard let userObject = userObject(userId) else { throw .credentialsIncorrect }

        if stats.sessionsCreated % 256 == 255 { pruneSessions(now: call.now) }
        let session = Session(id: nextId("session", base: 300), tokenId: nextId("token", base: 10_000),
                              token: Self.token(), installationId: installation.id, deviceId: device.id,
                              secret: secret, userId: userId, created: call.now,
                              expiresAt: call.now.addingTimeInterval(TimeInterval(lifetime)))
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
        let (page, pagination) = try ListPage.parse(call.query).apply([(session.userId, user)], id: \.0,
                                                                         path: "/v1/user")
        return .response(page.map(\.1), pagination: pagination)
    }

    func user(_ call: CallContext) throws(SandboxError) -> BunqJSON {
        let session = try requireOwnUser(call)
        guard let user = userObject(session.userId) else { throw .notFound("User") }
        return .response([user])
    }

    /// `GET /v1/user/{userID}/monetary-account` (every kind, each in its own wrapper) or a kind's own list.
    func monetaryAccounts(_ call: CallContext, kind: MonetaryAccount.Kind?) throws(SandboxError) -> BunqJSON {
        let session = try requireOwnUser(call)
        let path = "/v1/user/\(session.userId)/" + (kind?.pathSegment ?? "monetary-account")
        let (page, pagination) = try ListPage.parse(call.query).apply(accounts(visibleTo: session.userId, kind: kind),
                                                                         id: \.id, path: path)
        return .response(page.map { ($0.kind.rawValue, accountObject($0)) }, pagination: pagination)
    }

    /// `GET /v1/user/{userID}/monetary-account/{id}` (any kind) or a kind's own `.../{id}`.
    func monetaryAccount(_ call: CallContext, kind: MonetaryAccount.Kind?) throws(SandboxError) -> BunqJSON {
        let session = try requireOwnUser(call)
        guard call.pathIds.count == 2,
              let account = accounts(visibleTo: session.userId, kind: kind).first(where: { $0.id == call.pathIds[1] })
        else { throw .notFound(kind?.rawValue ?? "MonetaryAccount") }
        return .response([(account.kind.rawValue, accountObject(account))])
    }

    /// The session's own user id must be the `{userID}` of the URL; another id is a permissions error (a live
    /// session, so not the dead-session answer).
    func requireOwnUser(_ call: CallContext) throws(SandboxError) -> Session {
        guard let session = call.session else { throw .insufficientAuthentication }
        guard call.pathIds.first == session.userId else { throw .notAllowed }
        return session
    }
}

extension Error {
    /// The human part of an error, without internal codes.
    var message: String {
        (self as? CryptoError)?.message ?? "\(self)"
    }
}
