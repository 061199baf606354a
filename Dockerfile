# Image for both the operator and the injected sidecar. Node.js 24 runs the
# TypeScript sources directly (type stripping), so there is no build step.
FROM node:24-slim
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund
COPY src ./src
COPY sidecar ./sidecar
COPY operator ./operator
COPY crds ./crds
# The injector runs the sidecar as user 65532 with a read-only root filesystem.
USER 65532:65532
ENTRYPOINT ["node", "src/cli/main.ts"]
CMD ["--help"]
