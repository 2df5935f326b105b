import BunqAPI
import BunqCrypto
import BunqSandbox
import CurlHTTP
import Foundation
import TestThreads
import Testing

@Suite(.ownThread) struct FlowTests {
    @Test func apiKeyIdentityBootstrapsAndItsSessionWorks() async throws {
        try await withSandboxClient { client, admin in
            var registration = IdentityRegistration(kind: .apiKey, secret: try await admin.sandboxUserKey())
            var persisted: [BootstrapStep] = []
            let session = try await client.bootstrap(&registration, deviceDescription: "bunq-sessiond test") { saved in
                persisted.append(saved.nextStep)
            }
            // The device-server step persists the "started" mark before its request (shown as confirmDevice).
            #expect(persisted == [.installation, .deviceServer, .confirmDevice, .session, .session])
            #expect(session.user.kind == .person && session.token.count == 64)
            #expect(session.expiresAt.timeIntervalSince(session.created) == 604_800)
            #expect(abs(session.created.timeIntervalSinceNow) < 60, "created is server UTC, parsed as such")
            let user = try await client.currentUser(try registration.installationContext(), sessionToken: session.token)
            #expect(user.id == session.user.id)

            // Renewal is another session-server call with the same secret; ending one kills its token.
            let renewed = try await client.openSession(&registration)
            #expect(renewed.token != session.token)
            try await client.deleteSession(try registration.installationContext(), sessionToken: session.token)
            let dead = await bunqError { _ = try await client.currentUser(try registration.installationContext(), sessionToken: session.token) }
            #expect(dead?.kind == .sessionInvalid && dead?.status == 401)
            #expect(try await admin.stat("installations") == 1)
            #expect(try await admin.stat("device_servers") == 1)
        }
    }

    @Test func aRestartResumesAfterEveryStepWithoutRedoingIt() async throws {
        try await withSandboxClient { client, admin in
            let apiKey = try await admin.sandboxUserKey()
            var saved = IdentityRegistration(kind: .apiKey, secret: apiKey)
            // "Crash" after each step: continue only from what was persisted, with a fresh client each time.
            var session: BunqSession?
            var steps = 0
            while session == nil {
                let restarted = try BunqClient(endpoints: client.endpoints, rateLimiter: client.rateLimiter)
                var registration = saved
                session = try await restarted.advance(&registration, deviceDescription: "resume test")
                saved = registration
                await restarted.shutdown()
                steps += 1
            }
            #expect(steps == 4)
            #expect(try await admin.stat("installations") == 1)
            #expect(try await admin.stat("device_servers") == 1)
            #expect(try await admin.stat("sessions_created") == 1)
            let data = try JSONEncoder().encode(saved)
            #expect(try JSONDecoder().decode(IdentityRegistration.self, from: data) == saved, "the registration persists as JSON")
        }
    }

    @Test func aDeviceRegistrationInterruptedByACrashIsConfirmedNotRepeated() async throws {
        try await withSandboxClient { client, admin in
            var registration = IdentityRegistration(kind: .apiKey, secret: try await admin.sandboxUserKey())
            _ = try await client.advance(&registration, deviceDescription: "x")  // key
            _ = try await client.advance(&registration, deviceDescription: "x")  // installation
            // The process persisted `deviceRegistrationStarted`, sent device-server, and died before saving the reply.
            var crashed = registration
            crashed.deviceRegistrationStarted = true
            _ = try await client.registerDevice(try registration.installationContext(), description: "x",
                                                secret: registration.secret ?? "")
            #expect(crashed.nextStep == .confirmDevice)
            let session = try await client.advance(&crashed, deviceDescription: "x")
            #expect(session != nil && crashed.deviceBound)
            #expect(try await admin.stat("device_servers") == 1, "no second device for the installation")

            // Interrupted before the call reached bunq: confirming fails, and the device is registered once.
            var early = IdentityRegistration(kind: .apiKey, secret: try await admin.sandboxUserKey())
            _ = try await client.advance(&early, deviceDescription: "y")
            _ = try await client.advance(&early, deviceDescription: "y")
            early.deviceRegistrationStarted = true
            #expect(try await client.advance(&early, deviceDescription: "y") == nil)
            #expect(early.nextStep == .deviceServer)
            _ = try await client.advance(&early, deviceDescription: "y")
            #expect(try await client.advance(&early, deviceDescription: "y") != nil)
            #expect(try await admin.stat("device_servers") == 2)
        }
    }

    @Test func psd2ProviderRegistersAndItsFirstSessionIsOneHour() async throws {
        let eidas = try makeEIDAS()
        try await withSandboxClient { client, admin in
            let material = try PSD2Material(certificatePEM: eidas.certificate, certificatePath: "cert.pem",
                                            privateKeyPEM: eidas.key, privateKeyPath: "key.pem")
            #expect(material.warnings.isEmpty)
            var registration = IdentityRegistration(kind: .psd2Provider)
            let first = try await client.bootstrap(&registration, deviceDescription: "provider", psd2: material) { _ in }
            #expect(registration.secret?.count == 64, "the token_value became the provider's secret")
            #expect(first.user.kind == .serviceProvider)
            #expect(first.expiresAt.timeIntervalSince(first.created) == 3_600, "first PSD2 session: one hour")
            let second = try await client.openSession(&registration)
            #expect(second.expiresAt.timeIntervalSince(second.created) == 604_800)
            #expect(try await admin.stat("installations") == 1)
        }
    }

    @Test func oauthClientSetupAuthorizationAndTheUsersIdentity() async throws {
        let eidas = try makeEIDAS()
        try await withSandboxClient { client, admin in
            let material = try PSD2Material(certificatePEM: eidas.certificate, certificatePath: "cert.pem",
                                            privateKeyPEM: eidas.key, privateKeyPath: "key.pem")
            var provider = IdentityRegistration(kind: .psd2Provider)
            let session = try await client.bootstrap(&provider, deviceDescription: "provider", psd2: material) { _ in }
            let context = try provider.installationContext()
            let callbacks = ["https://example.com/bunq/callback", "https://example.com/other"]
            let oauth = try await client.ensureOAuthClient(context, sessionToken: session.token, userId: session.user.id,
                                                           callbackURLs: [callbacks[0]])
            #expect(oauth.status == "ACTIVE" && oauth.callbackURLs == [callbacks[0]])
            // A second run reuses the client and adds only what is missing.
            let again = try await client.ensureOAuthClient(context, sessionToken: session.token, userId: session.user.id,
                                                           callbackURLs: callbacks)
            #expect(again.id == oauth.id && again.callbackURLs == callbacks)
            #expect(try await admin.stat("oauth_clients") == 1)

            let person = try await admin.sandboxUserKey()
            try await admin.call("POST", "oauth/approve-as", ["api_key": person])
            let (url, state) = try client.authorizeURL(clientId: oauth.clientId, redirectURI: callbacks[0])
            #expect(state.count == 32)
            #expect(try client.authorizeURL(clientId: oauth.clientId, redirectURI: callbacks[0]).state != state)
            let redirect = try await admin.http.execute(.init(url: url))
            let location = try #require(URLComponents(string: redirect.headers["Location"] ?? ""))
            #expect(location.queryItems?.first { $0.name == "state" }?.value == state)
            let code = try #require(location.queryItems?.first { $0.name == "code" }?.value)

            let accessToken = try await client.exchangeCode(code, redirectURI: callbacks[0], client: oauth)
            let reused = await bunqError { _ = try await client.exchangeCode(code, redirectURI: callbacks[0], client: oauth) }
            #expect(reused?.kind == .badRequest && reused?.message.contains("invalid or expired") == true)

            var user = IdentityRegistration(kind: .oauthUser, secret: accessToken)
            let userSession = try await client.bootstrap(&user, deviceDescription: "oauth user") { _ in }
            #expect(userSession.user.kind == .apiKey)
            #expect(userSession.user.requestedBy?.id == session.user.id)
            #expect(userSession.user.grantedBy?.kind == .person)
            #expect(userSession.user.sessionTimeout == 604_800, "the requesting user's timeout governs")
        }
    }
}
