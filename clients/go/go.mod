// The example Go backend (main.go) in module mode: the stubs from `make stubs` by a replace to gen/go; the rest
// at the releases Debian ships, which the offline test builds against. `go mod tidy` fetches them once.
module github.com/faceharmony/backend/clients/go

go 1.19

require (
	github.com/faceharmony/backend/gen/go v0.0.0
	google.golang.org/genproto v0.0.0-20200526211855-cb27e3aa2013
	google.golang.org/grpc v1.33.3
)

replace github.com/faceharmony/backend/gen/go => ../../gen/go
