// Package colly shows a colly collector whose requests each lease a proxy
// from a pharox pool through transport.Transport. It lives in the examples
// module, with its own go.mod, so that pharox itself does not depend on
// colly; run it with `cd examples && go test ./...`.
package colly
