# A general-purpose Myelin image (the Complement test image is in
# build/complement). Build: docker build -t myelin .
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=1 go build -trimpath -tags 'netgo osusergo sqlite_omit_load_extension' \
    -ldflags '-s -w -linkmode external -extldflags "-static"' -o /out/myelin ./cmd/myelin

FROM gcr.io/distroless/static-debian12
COPY --from=build /out/myelin /usr/local/bin/myelin
WORKDIR /data
VOLUME /data
EXPOSE 8008 8448
ENTRYPOINT ["/usr/local/bin/myelin"]
CMD ["serve", "-config", "/data/myelin.yaml"]
