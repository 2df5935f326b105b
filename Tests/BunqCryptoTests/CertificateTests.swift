import BunqCrypto
import Foundation
import TestThreads
import Testing
import TestSupport

@Suite(.ownThread) struct CertificateTests {
    /// A CA and a leaf it signed, made with openssl the way a PSD2 test setup would.
    func makeChain(in dir: TemporaryDirectory, leafCN: String = "My App PISP AISP") throws {
        try Command.check(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", dir.path("ca.key"),
                           "-out", dir.path("ca.pem"), "-days", "30", "-subj", "/CN=Test QTSP CA/O=Test/C=NL"])
        try Command.check(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", dir.path("leaf.key"),
                           "-out", dir.path("leaf.csr"), "-subj", "/CN=\(leafCN)/C=NL"])
        try Command.check(["openssl", "x509", "-req", "-in", dir.path("leaf.csr"), "-CA", dir.path("ca.pem"),
                           "-CAkey", dir.path("ca.key"), "-CAcreateserial", "-days", "10", "-out", dir.path("leaf.pem")])
    }

    @Test func chainIsParsedInOrderAndLinksVerify() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        try makeChain(in: dir)
        let bundle = try dir.read("leaf.pem") + "\n" + dir.read("ca.pem")
        let chain = try Certificate.chain(pem: bundle)
        #expect(chain.count == 2)
        #expect(chain[0].subject == "CN=My App PISP AISP,C=NL")
        #expect(chain[0].issuer == "CN=Test QTSP CA,O=Test,C=NL")
        #expect(chain[1].subject == chain[0].issuer)
        #expect(chain[0].isSigned(by: chain[1]))
        #expect(!chain[1].isSigned(by: chain[0]))
        #expect(chain[0].isValid(at: Date()))
        #expect(chain[0].notAfter.timeIntervalSinceNow > 9 * 86_400 && chain[0].notAfter.timeIntervalSinceNow < 11 * 86_400)
        // The re-encoded PEM parses back to the same certificate.
        #expect(try Certificate(pem: chain[0].pem).subject == chain[0].subject)
    }

    @Test func privateKeyMatchIsDetected() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        try makeChain(in: dir)
        let leaf = try Certificate(pem: dir.read("leaf.pem"))
        #expect(leaf.isMatched(by: try RSAPrivateKey(pem: dir.read("leaf.key"))))
        #expect(!leaf.isMatched(by: try RSAPrivateKey(pem: dir.read("ca.key"))))
        #expect(try leaf.publicKey().matches(RSAPrivateKey(pem: dir.read("leaf.key")).publicKey))
    }

    @Test func aBadBlockInABundleIsNamedByPosition() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        try makeChain(in: dir)
        let bundle = try dir.read("leaf.pem") + "-----BEGIN CERTIFICATE-----\nZ2FyYmFnZQ==\n-----END CERTIFICATE-----\n"
        do {
            _ = try Certificate.chain(pem: bundle)
            Issue.record("a bundle with garbage parsed")
        } catch let error as CryptoError {
            #expect(error.code == .invalidCertificate)
            #expect(error.message.contains("certificate 2 of 2"))
        }
        #expect(throws: CryptoError.self) { try Certificate.chain(pem: "no certificates here") }
    }

    @Test func psd2RolesAreWholeWordsOfTheCommonName() {
        let examples: [(String, Set<PSD2Role>)] = [
            ("My App PISP AISP", [.pisp, .aisp]),
            ("Acme AISP", [.aisp]),
            ("PSP_PI PSP_AI example", [.pisp, .aisp]),
            ("Cards CBPII", [.cbpii]),
            ("PISPAISP Ltd", []),
            ("aisp lowercase", [.aisp]),
            ("Bank ASPSP", [.aspsp]),
            ("", []),
        ]
        for (commonName, roles) in examples {
            #expect(PSD2Role.named(in: commonName) == roles, "\(commonName)")
        }
    }

    @Test func utf8SubjectsStayReadable() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        try Command.check(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", dir.path("k.pem"),
                           "-out", dir.path("c.pem"), "-days", "1", "-utf8", "-subj", "/CN=Bäckerei PISP/O=A, B/C=NL"])
        let certificate = try Certificate(pem: dir.read("c.pem"))
        #expect(certificate.commonName == "Bäckerei PISP")
        #expect(certificate.subject == #"CN=Bäckerei PISP,O=A\, B,C=NL"#)
        #expect(certificate.psd2Roles == [.pisp])
    }
}
