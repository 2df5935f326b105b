import BunqAPI
import BunqSandbox
import CurlHTTP
import Foundation
import Logging
import SessionKeeper
import TestThreads
import Testing
import TestSupport

@Suite(.ownThread) struct KeeperOAuthTests {
    @Test func anOAuthUserConnectsThroughTheCoreAndGoesLive() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        try Command.check(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-keyout", dir.path("key.pem"), "-out",
                           dir.path("cert.pem"), "-days", "30", "-nodes", "-subj", "/CN=Keeper Test PISP AISP/C=NL"])
        // bunq's limits at a fiftieth: the provider's and the user's first sessions share the session-server budget.
        try await BunqSandbox.withRunning(SandboxConfiguration(rateLimits: true, rateLimitScale: 0.02)) { base in
            let file = try dir.write("config.yaml", """
                bunq: {api_base_url: '\(base)/v1/', oauth_authorize_url: '\(base)/auth', oauth_token_url: '\(base)/v1/token',
                       rate_limits: bunq, rate_limit_scale: 0.02}
                state: {directory: \(dir.path("state"))}
                provider:
                  certificate: \(dir.path("cert.pem"))
                  private_key: \(dir.path("key.pem"))
                  oauth_redirect_uris: [https://example.com/bunq/callback]
                """)
            let configuration = try KeeperConfiguration.load(file: file, environment: [:])
            let provider = try #require(configuration.provider)
            let psd2 = try PSD2Material(certificatePEM: provider.certificatePEM, certificatePath: provider.certificatePath,
                                        privateKeyPEM: provider.privateKeyPEM, privateKeyPath: provider.privateKeySource)
            let keeper = try Keeper(configuration: configuration, psd2: psd2,
                                    logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }))
            let running = Task { try await keeper.run() }
            defer { running.cancel() }

            var providerLive = false
            for _ in 0..<300 where !providerLive {
                if case .granted? = await keeper.tokenGrant("provider") { providerLive = true } else {
                    try await Task.sleep(for: .milliseconds(100))
                }
            }
            #expect(providerLive)

            let authorization = try await keeper.oauthAuthorizeURL()
            #expect(authorization.redirectURI == "https://example.com/bunq/callback")
            #expect(authorization.expiresAt.timeIntervalSinceNow > 590)
            let http = try HTTPClient()
            let redirect = try await http.execute(HTTPRequest(url: authorization.url))
            await http.shutdown()
            let location = try #require(URLComponents(string: redirect.headers["Location"] ?? ""))
            let code = try #require(location.queryItems?.first { $0.name == "code" }?.value)
            #expect(location.queryItems?.first { $0.name == "state" }?.value == authorization.state)

            let name = try await keeper.completeOAuth(code: code, state: authorization.state)
            #expect(name.hasPrefix("user-"))
            guard case .granted(_, let userId, _, _, 1)? = await keeper.tokenGrant(name) else {
                Issue.record("the new user context is not live")
                return
            }
            #expect(userId > 0)
            #expect(await keeper.contextNames() == [name, "provider"].sorted())

            // The state is single-use; a redirect URI outside the configuration is refused.
            await #expect(throws: KeeperError.self) { _ = try await keeper.completeOAuth(code: code, state: authorization.state) }
            await #expect(throws: KeeperError.self) { _ = try await keeper.oauthAuthorizeURL(redirectURI: "https://evil.example/cb") }

            try await keeper.removeContext(name)
            #expect(await keeper.tokenGrant(name) == nil)
            #expect(await keeper.contextNames() == ["provider"])
        }
    }
}
