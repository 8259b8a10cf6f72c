// A CRI client as the kubelet is one for image pulls: PullImage over containerd's socket.
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

const PROTO = path.resolve(__dirname, '..', '..', '..', 'test', 'lib', 'cri-image.proto');

interface ImageServiceClient extends grpc.Client {
  PullImage(
    req: { image: { image: string } },
    cb: (err: grpc.ServiceError | null, res?: { imageRef: string }) => void,
  ): grpc.ClientUnaryCall;
}

type ImageServiceConstructor = new (addr: string, creds: grpc.ChannelCredentials) => ImageServiceClient;

/** Parsed once, when loaded, as a kubelet has it compiled in: no pull a benchmark times parses it. */
const ImageService = (
  grpc.loadPackageDefinition(protoLoader.loadSync(PROTO)) as unknown as {
    runtime: { v1: { ImageService: ImageServiceConstructor } };
  }
).runtime.v1.ImageService;

/** Pulls `image` through CRI on containerd at `address` (a unix socket path); resolves to the image id. */
export async function criPullImage(address: string, image: string): Promise<string> {
  const client = new ImageService(`unix://${address}`, grpc.credentials.createInsecure());
  try {
    return await new Promise<string>((resolve, reject) =>
      client.PullImage({ image: { image } }, (err, res) =>
        err
          ? reject(new Error(`CRI PullImage ${image}: ${err.message}`, { cause: err }))
          : resolve(res?.imageRef ?? ''),
      ),
    );
  } finally {
    client.close();
  }
}
