// gRPC server reflection (grpc.reflection.v1 and v1alpha), so grpcurl and `buf curl`
// can list and call our services with no proto files. Descriptors come straight from the
// generated code, so reflection can never drift from what the server actually speaks.
import type { ConnectRouter } from "@connectrpc/connect";
import { createRegistry, toBinary, type DescFile, type DescService } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { ServerReflection as ReflectionV1 } from "../../gen/grpc/reflection/v1/reflection_pb.js";
import { ServerReflection as ReflectionV1Alpha } from "../../gen/grpc/reflection/v1alpha/reflection_pb.js";

// The request and response shapes of v1 and v1alpha are identical field for field.
type ReflectionRequest = {
  messageRequest:
    | { case: "fileByFilename"; value: string }
    | { case: "fileContainingSymbol"; value: string }
    | { case: "fileContainingExtension"; value: { containingType: string; extensionNumber: number } }
    | { case: "allExtensionNumbersOfType"; value: string }
    | { case: "listServices"; value: string }
    | { case: undefined; value?: undefined };
};

const GRPC_NOT_FOUND = 5;
const GRPC_UNIMPLEMENTED = 12;

function transitiveFiles(roots: DescFile[]): DescFile[] {
  const seen = new Map<string, DescFile>();
  const visit = (file: DescFile) => {
    if (seen.has(file.name)) return;
    seen.set(file.name, file);
    file.dependencies.forEach(visit);
  };
  roots.forEach(visit);
  return [...seen.values()];
}

export function reflectionRoutes(services: DescService[]) {
  const all = [...services, ReflectionV1, ReflectionV1Alpha];
  const knownFiles = transitiveFiles(all.map((s) => s.file));
  const byName = new Map(knownFiles.map((f) => [f.name, f]));
  const registry = createRegistry(...knownFiles);
  const serviceNames = all.map((s) => s.typeName).sort();

  const fileWithDeps = (file: DescFile) =>
    transitiveFiles([file]).map((f) => toBinary(FileDescriptorProtoSchema, f.proto));

  const fileDefining = (symbol: string): DescFile | undefined => {
    const direct = registry.get(symbol) ?? registry.getService(symbol) ?? registry.getExtension(symbol);
    if (direct) return direct.file;
    // A method or field: `pkg.Service.Method` → look up `pkg.Service`.
    const parent = symbol.slice(0, symbol.lastIndexOf("."));
    return parent ? (registry.get(parent) ?? registry.getService(parent))?.file : undefined;
  };

  function answer(req: ReflectionRequest) {
    const notFound = (what: string) => ({
      case: "errorResponse" as const,
      value: { errorCode: GRPC_NOT_FOUND, errorMessage: `${what} not found` },
    });
    const files = (file: DescFile | undefined, what: string) =>
      file ? { case: "fileDescriptorResponse" as const, value: { fileDescriptorProto: fileWithDeps(file) } } : notFound(what);
    const m = req.messageRequest;
    switch (m.case) {
      case "listServices":
        return { case: "listServicesResponse" as const, value: { service: serviceNames.map((name) => ({ name })) } };
      case "fileByFilename":
        return files(byName.get(m.value), `file ${m.value}`);
      case "fileContainingSymbol":
        return files(fileDefining(m.value), `symbol ${m.value}`);
      case "fileContainingExtension": {
        const message = registry.getMessage(m.value.containingType);
        const ext = message && registry.getExtensionFor(message, m.value.extensionNumber);
        return files(ext?.file, `extension ${m.value.extensionNumber} of ${m.value.containingType}`);
      }
      case "allExtensionNumbersOfType": {
        const message = registry.getMessage(m.value);
        if (!message) return notFound(`type ${m.value}`);
        const numbers = knownFiles
          .flatMap((f) => f.extensions)
          .filter((e) => e.extendee.typeName === m.value)
          .map((e) => e.number);
        return { case: "allExtensionNumbersResponse" as const, value: { baseTypeName: m.value, extensionNumber: numbers } };
      }
      default:
        return { case: "errorResponse" as const, value: { errorCode: GRPC_UNIMPLEMENTED, errorMessage: "unsupported request" } };
    }
  }

  return (router: ConnectRouter) => {
    for (const service of [ReflectionV1, ReflectionV1Alpha]) {
      router.service(service, {
        async *serverReflectionInfo(requests: AsyncIterable<ReflectionRequest & { host: string }>) {
          for await (const req of requests) {
            // The generated types differ per version only by name; the shapes are the same.
            yield { validHost: req.host, originalRequest: req as never, messageResponse: answer(req) as never };
          }
        },
      });
    }
    return serviceNames;
  };
}
